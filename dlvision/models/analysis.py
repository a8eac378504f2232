"""Architecture analysis of chapter 2: layer-by-layer shapes, weights and receptive fields, and the
course CNN rewritten as a fully-convolutional network (COURSE.md section 2, "The network")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlvision.models.cnn import CourseCNN


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """The course's formula floor((x - k + 2p) / s) + 1 (with dilation, and ceil for ``ceil_mode`` pools)."""
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * padding - span
    if ceil_mode:
        out = -(-numerator // stride) + 1
        if (out - 1) * stride >= size + padding:  # PyTorch: the last window must start inside the input
            out -= 1
        return out
    return numerator // stride + 1


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@dataclass
class LayerInfo:
    """One leaf layer seen in a forward pass."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int  # trainable weights and biases of this layer itself
    receptive_field: str  # "RxR" pixels of the input seen by one output unit, "all" or "-"
    jump: int | None = None  # distance in input pixels between neighbouring output units


class _Field:
    """Receptive field l and jump j along the layers: l_k = l_{k-1} + (f_k - 1) * j_{k-1}, j_k = j_{k-1} * s_k."""

    def __init__(self) -> None:
        self.size, self.jump, self.global_ = (1, 1), (1, 1), False

    def through(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
            dilation = _pair(getattr(module, "dilation", 1))
            self.size = tuple(s + (d * (k - 1)) * j for s, k, d, j in zip(self.size, kernel, dilation, self.jump))
            self.jump = tuple(j * s for j, s in zip(self.jump, stride))
        elif isinstance(module, (nn.Linear, nn.MultiheadAttention, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            self.global_ = True

    def describe(self, input_hw: tuple[int, int] | None) -> str:
        if self.global_:
            return "all"
        if input_hw is not None and all(s >= i for s, i in zip(self.size, input_hw)):
            return f"{self.size[0]}x{self.size[1]} (all)"
        return f"{self.size[0]}x{self.size[1]}"


def analyse(net: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[LayerInfo]:
    """Run ``net`` (eval mode) on a zero batch of ``input_shape`` (without the batch dimension) and
    return each leaf layer, in the order it ran: output shape, weights, receptive field.

    The receptive field follows the layers in execution order, which is exact for chains such as the
    course CNN; a layer that mixes every position (a Linear on a flattened map, attention) makes it
    "all". Parameters that belong to no leaf layer (a ViT's class token, position embeddings) are
    reported as a pseudo-layer ``(own parameters)`` so the total stays exact.
    """
    layers: list[LayerInfo] = []
    field = _Field()
    image_input = len(input_shape) == 3
    input_hw = tuple(input_shape[-2:]) if image_input else None
    seen: set[int] = set()
    hooks = []

    def hook(module: nn.Module, args, output) -> None:
        name = names[id(module)]
        out = output[0] if isinstance(output, (tuple, list)) else output
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
        params = 0
        if id(module) not in seen:  # a module used twice counts its weights once
            params = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            seen.add(id(module))
        if image_input:
            field.through(module)
            rf = field.describe(input_hw)
        else:
            rf = "-"
        layers.append(LayerInfo(name, type(module).__name__, shape, params, rf,
                                None if field.global_ or not image_input else field.jump[0]))

    names = {}
    for name, module in net.named_modules():
        names[id(module)] = name or type(net).__name__
        leaf = not any(True for _ in module.children())
        if leaf or isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_hook(hook))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for handle in hooks:
            handle.remove()
        net.train(was_training)
    counted = {id(p) for name, m in net.named_modules() if id(m) in seen for p in m.parameters(recurse=False)}
    # parameters of modules that never ran as hooked leaves (e.g. inside MultiheadAttention, or own tensors)
    rest = sum(p.numel() for p in net.parameters() if p.requires_grad and id(p) not in counted
               and not _inside_hooked(net, p, seen))
    if rest:
        layers.append(LayerInfo("(own parameters)", "Parameter", (), rest, "-"))
    return layers


def _inside_hooked(net: nn.Module, param: torch.nn.Parameter, seen: set[int]) -> bool:
    for module in net.modules():
        if id(module) in seen and isinstance(module, nn.MultiheadAttention):
            if any(p is param for p in module.parameters()):
                return True
    return False


def format_table(layers: list[LayerInfo], input_shape: tuple[int, ...]) -> str:
    """The analysis as a text table with a total line."""
    rows = [("layer", "type", "output shape", "weights", "receptive field")]
    rows.append(("input", "", " x ".join(map(str, input_shape)), "", "1x1" if len(input_shape) == 3 else "-"))
    for layer in layers:
        shape = " x ".join(map(str, layer.output_shape))
        rows.append((layer.name, layer.kind, shape, f"{layer.params:,}" if layer.params else "0", layer.receptive_field))
    total = sum(layer.params for layer in layers)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(width) if i != 3 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(f"total weights to learn: {total:,}")
    return "\n".join(lines)


class FullyConvolutionalCNN(nn.Module):
    """The course CNN with fc4 and fc5 rewritten as convolutions (fc4: 64 -> 1000 with a 4x4 kernel,
    fc5: 1000 -> classes with a 1x1 kernel), sharing the same weights.

    On 32x32 (or 28x28) inputs it outputs (N, classes, 1, 1) equal to the CNN's logits; on a larger
    image, (N, classes, h, w): the class scores of every 32x32-like window, stride 8 pixels.
    """

    def __init__(self, cnn: CourseCNN) -> None:
        super().__init__()
        self.num_classes = cnn.num_classes
        self.features = cnn.features
        fc4, fc5 = cnn.fc4, cnn.fc5
        channels = self.features[-1][0].out_channels
        side = int(round((fc4.in_features / channels) ** 0.5))
        if channels * side * side != fc4.in_features:
            raise ValueError(f"fc4 takes {fc4.in_features} inputs, not a square map of {channels} channels")
        self.fc4 = nn.Conv2d(channels, fc4.out_features, side)
        self.fc5 = nn.Conv2d(fc5.in_features, fc5.out_features, 1)
        with torch.no_grad():
            # nn.Flatten orders the inputs (channel, row, column): exactly a conv kernel's layout
            self.fc4.weight.copy_(fc4.weight.view(fc4.out_features, channels, side, side))
            self.fc4.bias.copy_(fc4.bias)
            self.fc5.weight.copy_(fc5.weight.view(fc5.out_features, fc5.in_features, 1, 1))
            self.fc5.bias.copy_(fc5.bias)
        self.relu4 = nn.ReLU(inplace=True)
        self.dropout = cnn.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc5(self.dropout(self.relu4(self.fc4(self.features(x)))))


def to_fully_convolutional(cnn: CourseCNN) -> FullyConvolutionalCNN:
    """``FullyConvolutionalCNN(cnn)``: the convolutions are shared, fc4/fc5 copied into conv layers."""
    if not isinstance(cnn, CourseCNN):
        raise TypeError(f"to_fully_convolutional expects a CourseCNN, got {type(cnn).__name__}")
    return FullyConvolutionalCNN(cnn)
