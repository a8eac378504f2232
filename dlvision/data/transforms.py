"""Batch transforms: small ``nn.Module``s that work on whole (N, C, H, W) batches on the device.

They run in the data module's ``on_after_batch_transfer``, so a batch is augmented and normalized
where it already lives (GPU or CPU), with per-image randomness drawn in one call, and never with
per-sample Python. Augmentations follow the ``nn.Module`` convention: random in ``train()`` mode,
deterministic (or identity) in ``eval()`` mode. Normalizers are fitted on the training split only
and keep their statistics in buffers, so they move with ``.to(device)`` and live in state dicts.
"""

from __future__ import annotations

import torch
from torch import nn


class ToFloat(nn.Module):
    """uint8 images in [0, 255] -> float32 in [0, 1]; float inputs pass unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x


class Normalizer(nn.Module):
    """A normalization fitted on training images (float, N x C x H x W) and applied to any batch."""

    def fit(self, x: torch.Tensor) -> "Normalizer":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # "none": the identity
        return x

    def describe(self) -> str:
        """One line with the fitted statistics, for the logs."""
        return type(self).__name__


class Standardize(Normalizer):
    """Per-channel (x - mean) / std, the statistics computed on the training split only."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Standardize":
        count = x.numel() // x.shape[1]
        dims = (0, 2, 3)
        mean = x.sum(dim=dims, dtype=torch.float64) / count
        var = (x.square().sum(dim=dims, dtype=torch.float64) / count - mean.square()) * count / (count - 1)
        self.mean = mean.float()
        self.std = var.clamp_min(0).sqrt().float().clamp_min(1e-8)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def describe(self) -> str:
        mean = ", ".join(f"{v:.4f}" for v in self.mean.tolist())
        std = ", ".join(f"{v:.4f}" for v in self.std.tolist())
        return f"standardize: mean=({mean}) std=({std}) (fitted on the training split)"


def crop_indices(
    n: int, size: int, height: int, width: int, random: bool, flip_p: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (n x size each) of one crop per image, random or centered.

    With ``flip_p`` > 0 each image's columns are reversed with that probability: a horizontal
    flip folded into the same gather.
    """
    steps = torch.arange(size, device=device)
    if random:
        top = torch.randint(0, height - size + 1, (n, 1), device=device)
        left = torch.randint(0, width - size + 1, (n, 1), device=device)
    else:
        top = torch.full((n, 1), (height - size) // 2, device=device)
        left = torch.full((n, 1), (width - size) // 2, device=device)
    rows = top + steps
    cols = left + steps
    if flip_p > 0:
        flip = torch.rand(n, 1, device=device) < flip_p
        cols = torch.where(flip, cols.flip(1), cols)
    return rows, cols


def gather_crops(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Crop every image of ``x`` (N, C, H, W) at its own rows/cols in one indexing operation."""
    n = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    out = x.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]  # N, s, s, C
    return out.permute(0, 3, 1, 2).contiguous()


class RandomCropFlip(nn.Module):
    """Train: a random ``size`` crop (after zero ``padding``) and a horizontal flip with ``flip_p``.

    Eval: the center ``size`` crop of the unpadded image (``padding`` > 0 with ``size`` equal to the
    image is the padded-crop augmentation; eval then leaves the image as it is).
    """

    def __init__(self, size: int = 28, padding: int = 0, flip_p: float = 0.5) -> None:
        super().__init__()
        if size <= 0 or padding < 0 or not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"crop needs size > 0, padding >= 0 and flip_p in [0, 1]; got {size}, {padding}, {flip_p}")
        self.size, self.padding, self.flip_p = size, padding, flip_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.size > min(height, width) + (2 * self.padding if self.training else 0):
            raise ValueError(f"crop size {self.size} is larger than the images ({height}x{width})")
        if self.training:
            if self.padding:
                x = nn.functional.pad(x, (self.padding,) * 4)
                height, width = x.shape[-2:]
            rows, cols = crop_indices(x.shape[0], self.size, height, width, True, self.flip_p, x.device)
        else:
            if self.size == height == width:
                return x
            rows, cols = crop_indices(x.shape[0], self.size, height, width, False, 0.0, x.device)
        return gather_crops(x, rows, cols)

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}, flip_p={self.flip_p}"


class CenterCrop(nn.Module):
    """The center ``size`` x ``size`` crop of every image, in train and eval mode alike."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return x[..., top : top + self.size, left : left + self.size]


NORMALIZERS: dict[str, type[Normalizer]] = {
    "none": Normalizer,
    "standardize": Standardize,
}


def make_normalizer(name: str, channels: int) -> Normalizer:
    """The normalizer registered as ``name`` (see ``NORMALIZERS``), not yet fitted."""
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalization {name!r}: choose one of {sorted(NORMALIZERS)}")
    cls = NORMALIZERS[name]
    return cls(channels) if cls is not Normalizer else cls()


def _crop_flip(crop_size: int) -> nn.Module:
    return RandomCropFlip(crop_size, padding=0, flip_p=0.5)


# name -> factory(crop_size) of a train/eval-aware batch augmentation. To add one, write a small
# nn.Module (random in train mode, deterministic in eval mode) and register it here.
AUGMENTATIONS: dict[str, "callable"] = {
    "crop_flip": _crop_flip,
}


def make_augmentation(name: str, crop_size: int) -> nn.Module:
    """The augmentation registered as ``name`` (see ``AUGMENTATIONS``)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}: choose from {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](crop_size)
