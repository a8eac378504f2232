"""The course CNN of chapter 2 (COURSE.md section 2): three 5x5 convolutions, two linear layers."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, batch_norm: bool, ceil_mode: bool = False) -> nn.Sequential:
    """conv 5x5 (stride 1, padding 2) -> [BatchNorm] -> ReLU -> maxpool 2x2."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, 2, ceil_mode=ceil_mode)]
    return nn.Sequential(*layers)


class CourseCNN(nn.Module):
    """conv1 32 -> conv2 64 -> conv3 64 (each 5x5 + ReLU + maxpool) -> fc4 1000 -> ReLU -> fc5.

    1,191,170 parameters on 3x32x32 inputs with 10 classes. The last pool uses ``ceil_mode`` so
    28x28 crops also end at 4x4. ``dropout`` is the probability before fc5 (0 disables it, 1 zeroes
    fc4's output in training); ``batch_norm`` inserts BatchNorm2d after each convolution.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout}")
        if num_classes <= 0 or in_channels <= 0:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
        self.num_classes = num_classes
        self.features = nn.Sequential(
            conv_block(in_channels, 32, batch_norm),
            conv_block(32, 64, batch_norm),
            conv_block(64, 64, batch_norm, ceil_mode=True),
        )
        self.flatten = nn.Flatten()
        self.fc4 = nn.Linear(64 * 4 * 4, 1000)
        self.relu4 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc5 = nn.Linear(1000, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-2:] != (4, 4):
            raise ValueError(
                f"CourseCNN expects 28x28 to 32x32 inputs (feature map 4x4 before fc4), got an input of "
                f"{tuple(x.shape[-2:])} after the convolutions; use a fully-convolutional version for larger images"
            )
        return self.fc5(self.dropout(self.relu4(self.fc4(self.flatten(x)))))
