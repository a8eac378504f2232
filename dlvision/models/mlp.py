"""Multi-layer perceptron: the network of chapter 1 (circles and MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return the activation module called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """Flatten -> [Linear -> activation] * len(hidden) -> Linear to ``num_classes`` logits.

    ``init_std`` draws every weight and bias from N(0, init_std) as the course does (0.3);
    ``None`` keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (10,),
        num_classes: int = 2,
        activation: str = "tanh",
        init_std: float | None = None,
    ) -> None:
        if in_features <= 0 or num_classes <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(
                f"MLP sizes must be positive: in_features={in_features}, hidden={list(hidden)}, "
                f"num_classes={num_classes}"
            )
        if init_std is not None and init_std <= 0:
            raise ValueError(f"init_std must be > 0 (or null for PyTorch's default), got {init_std}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.in_features = in_features
        self.num_classes = num_classes
        if init_std is not None:
            for p in self.parameters():
                nn.init.normal_(p, 0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.in_features:
            raise ValueError(
                f"MLP expects {self.in_features} input features per sample, got shape "
                f"{tuple(x.shape[1:])} ({x[0].numel()} features): set model.net.init_args.in_features"
            )
        return super().forward(x)
