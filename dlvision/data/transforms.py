"""Batch transforms: small ``nn.Module``s that work on whole (N, C, H, W) batches on the device.

They run in the data module's ``on_after_batch_transfer``, so a batch is augmented and normalized
where it already lives (GPU or CPU), with per-image randomness drawn in one call, and never with
per-sample Python. Augmentations follow the ``nn.Module`` convention: random in ``train()`` mode,
deterministic (or identity) in ``eval()`` mode. Normalizers are fitted on the training split only
and keep their statistics in buffers, so they move with ``.to(device)`` and live in state dicts.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
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
    """Crop every image of ``x`` (N, C, H, W) at its own rows/cols (N x s each): two ``gather``
    calls, rows then columns (1.5-2x faster on a CPU than one advanced-indexing call with three
    broadcast index tensors; measured by benchmarks/data_pipeline.py)."""
    n, c, _, width = x.shape
    size_r, size_c = rows.shape[1], cols.shape[1]
    x = x.contiguous()
    picked = x.gather(2, rows.view(n, 1, size_r, 1).expand(n, c, size_r, width))
    return picked.gather(3, cols.view(n, 1, 1, size_c).expand(n, c, size_r, size_c))


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


class PaddedCropFlip(nn.Module):
    """Train: zero-pad by ``padding`` and take a random crop of the original size, plus a horizontal
    flip with ``flip_p`` (the usual CIFAR augmentation). Eval: the image unchanged."""

    def __init__(self, padding: int = 4, flip_p: float = 0.5) -> None:
        super().__init__()
        if padding < 0 or not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"padded crop needs padding >= 0 and flip_p in [0, 1]; got {padding}, {flip_p}")
        self.padding, self.flip_p = padding, flip_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        height, width = x.shape[-2:]
        if self.padding:
            x = nn.functional.pad(x, (self.padding,) * 4)
        n, device = x.shape[0], x.device
        top = torch.randint(0, 2 * self.padding + 1, (n, 1), device=device)
        left = torch.randint(0, 2 * self.padding + 1, (n, 1), device=device)
        rows = top + torch.arange(height, device=device)
        cols = left + torch.arange(width, device=device)
        if self.flip_p > 0:
            flip = torch.rand(n, 1, device=device) < self.flip_p
            cols = torch.where(flip, cols.flip(1), cols)
        return gather_crops(x, rows, cols)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip_p={self.flip_p}"


class CenterCrop(nn.Module):
    """The center ``size`` x ``size`` crop of every image, in train and eval mode alike."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return x[..., top : top + self.size, left : left + self.size]


# ----- per-image normalizations (nothing to fit) ----------------------------------------------------

class GlobalContrastNormalize(Normalizer):
    """Global contrast normalization of each image: ``scale * (x - mean) / max(eps, sqrt(lam + var))``
    with the mean and variance over all pixels and channels of that image (Goodfellow et al. 2013).
    Nothing is fitted; ``lam`` regularises flat images and ``eps`` avoids a division by zero."""

    def __init__(self, channels: int = 3, scale: float = 1.0, lam: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__()
        if scale <= 0 or lam < 0 or eps <= 0:
            raise ValueError(f"gcn needs scale > 0, lam >= 0 and eps > 0; got {scale}, {lam}, {eps}")
        self.scale, self.lam, self.eps = scale, lam, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        centered = x - x.mean(dim=dims, keepdim=True)
        norm = (self.lam + centered.square().mean(dim=dims, keepdim=True)).sqrt().clamp_min(self.eps)
        return self.scale * centered / norm

    def describe(self) -> str:
        return f"gcn: per image (x - mean) / std, scale={self.scale}, lam={self.lam}"


class LpNormalize(Normalizer):
    """Each image divided by its own L1 (``p=1``) or L2 (``p=2``) norm over all its values.

    As in the course (and scikit-learn's ``Normalizer``) nothing rescales the result: with L1 the
    3,072 values of a CIFAR image sum to 1 in absolute value, so they are tiny (about 3e-4); the
    course's L1 run collapsed to chance (10 %). ``scale`` multiplies the result if you want it larger."""

    def __init__(self, channels: int = 3, p: int = 2, scale: float = 1.0, eps: float = 1e-12) -> None:
        super().__init__()
        if p not in (1, 2) or scale <= 0 or eps <= 0:
            raise ValueError(f"lp normalization needs p in (1, 2), scale > 0 and eps > 0; got {p}, {scale}, {eps}")
        self.p, self.scale, self.eps = p, scale, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.flatten(1).norm(p=self.p, dim=1).clamp_min(self.eps)
        return self.scale * x / norm.view(-1, *([1] * (x.dim() - 1)))

    def describe(self) -> str:
        return f"l{self.p}: each image divided by its L{self.p} norm (scale {self.scale})"


def _l1(channels: int = 3, **options) -> LpNormalize:
    return LpNormalize(channels, p=1, **options)


def _l2(channels: int = 3, **options) -> LpNormalize:
    return LpNormalize(channels, p=2, **options)


# ----- fitted on the training split -----------------------------------------------------------------

class MinMaxScale(Normalizer):
    """Per-channel min-max scaling to [0, 1] with the minimum and maximum of the training split."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(channels))
        self.register_buffer("high", torch.ones(channels))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "MinMaxScale":
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.low, self.high = flat.amin(dim=1).float(), flat.amax(dim=1).float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (x - self.low.view(shape)) / (self.high - self.low).clamp_min(1e-12).view(shape)

    def describe(self) -> str:
        low = ", ".join(f"{v:.4f}" for v in self.low.tolist())
        high = ", ".join(f"{v:.4f}" for v in self.high.tolist())
        return f"minmax: per-channel min=({low}) max=({high}) (fitted on the training split)"


def uint8_levels(x: torch.Tensor) -> torch.Tensor | None:
    """The uint8 image ``q`` with ``x == q / 255`` exactly (what ``ToFloat`` made), or None if ``x`` is not one."""
    if x.dtype != torch.float32 or x.numel() == 0:
        return None
    q = (x * 255).round_()
    if q.min() < 0 or q.max() > 255 or not torch.equal(q / 255, x):
        return None
    return q.to(torch.uint8)


def _integer_gram(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Exact column sums and Gram matrix (float64) of uint8 rows ``q`` (N x D), with int8 matrix
    products (``torch._int_mm``, int32 accumulators, AMX/VNNI on recent CPUs): the values are shifted
    to -128..127 and summed over chunks of at most 2^17 rows, so no int32 sum can overflow.
    None where int8 products are not available (then the float64 path runs)."""
    n, d = q.shape
    if d % 8 or d < 17 or not hasattr(torch, "_int_mm"):
        return None
    shifted = (q.to(torch.int16) - 128).to(torch.int8)
    gram = torch.zeros(d, d, dtype=torch.float64)
    chunk = 1 << 17  # 2^17 * 128^2 = 2^31: the int32 sums stay in range
    try:
        for start in range(0, n, chunk):
            block = shifted[start : start + chunk]
            rows = len(block)
            if rows % 8 or rows < 17:  # _int_mm wants an inner size that is a multiple of 8: pad with zeros
                block = torch.cat([block, block.new_zeros(max(17, -(-rows // 8) * 8) - rows, d)])
            gram += torch._int_mm(block.T.contiguous(), block).double()
    except RuntimeError:
        return None
    return shifted.sum(dim=0, dtype=torch.int64).double(), gram


def covariance_eigh(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (D), eigenvalues (D, ascending) and eigenvectors (D x D columns) of the covariance of the
    rows of ``x`` (N x D), all float64.

    Images that are uint8 values / 255 (what the data modules hand the normalizers) get an *exact*
    covariance from int8 matrix products (``_integer_gram``: the expensive N x D x D part, in seconds
    on 50,000 x 3,072). Other inputs go through float64 matrix products, chunk by chunk, so the
    float64 copy of the data is never made whole. float32 products would lose the small
    eigenvalues of ill-conditioned data, which whitening divides by. The symmetric
    eigen-decomposition then runs in float64 (LAPACK syevd).
    """
    n, d = x.shape
    if n < 2:
        raise ValueError(f"whitening needs at least 2 training images, got {n}")
    q = uint8_levels(x)
    exact = _integer_gram(q) if q is not None else None
    if exact is not None:
        sums, gram = exact  # of the values shifted by -128
        shifted_mean = sums / n
        cov = (gram - n * torch.outer(shifted_mean, shifted_mean)) / (255.0**2)
        mean = (shifted_mean + 128) / 255
    else:
        mean = x.sum(dim=0, dtype=torch.float64) / n
        cov = torch.zeros(d, d, dtype=torch.float64)
        for start in range(0, n, chunk):
            block = x[start : start + chunk].double() - mean
            cov.addmm_(block.T, block)
    cov /= n - 1
    cov = (cov + cov.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return mean, eigenvalues.clamp_min(0), eigenvectors


def _fingerprint(x: torch.Tensor) -> str:
    """A sha1 of a tensor's shape, dtype and bytes (the cache key of a whitening fit)."""
    digest = hashlib.sha1(f"{tuple(x.shape)}:{x.dtype}".encode())
    digest.update(x.detach().contiguous().cpu().view(torch.uint8).numpy().data)
    return digest.hexdigest()[:20]


class Whitening(Normalizer):
    """ZCA (``mode='zca'``) or PCA (``mode='pca'``) whitening of whole images, fitted on the training split.

    With the training covariance ``C = U diag(s) U^T`` of the flattened images (D = C*H*W values),
    PCA whitening is ``W = diag(1 / sqrt(s + eps)) U^T`` (coordinates on the principal axes, written
    back into the C x H x W layout, so the image structure is lost) and ZCA whitening is
    ``W = U diag(1 / sqrt(s + eps)) U^T`` (rotated back: whitened images still look like images,
    with edges enhanced). ``eps`` > 0 regularises the small eigenvalues: the whitened training data
    has covariance ``diag(s / (s + eps))`` in the eigenbasis, the identity for s >> eps. The
    eigen-decomposition is computed once (see ``covariance_eigh``) and cached in ``cache_dir``
    keyed by a hash of the training data, so a second run, or another eps, costs no new fit.
    Buffers: ``mean`` (D) and ``matrix`` (D x D), saved in checkpoints.
    """

    def __init__(self, channels: int = 3, mode: str = "zca", eps: float = 1e-2,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if mode not in ("zca", "pca"):
            raise ValueError(f"whitening mode must be 'zca' or 'pca', got {mode!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0 or not math.isfinite(eps):
            raise ValueError(f"{mode} eps must be a finite number > 0 (it regularises 1/sqrt(eigenvalue + eps)), got {eps!r}")
        self.mode, self.eps = mode, float(eps)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fit_seconds: float | None = None
        self.cache_hit = False
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("matrix", torch.zeros(0, 0))

    def _decomposition(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache_file = None
        if self.cache_dir is not None:
            cache_file = self.cache_dir / f".dlvision-whitening-{_fingerprint(flat)}.pt"
            if cache_file.is_file():
                try:
                    cached = torch.load(cache_file, weights_only=True)
                    self.cache_hit = True
                    return cached["mean"], cached["eigenvalues"], cached["eigenvectors"]
                except (OSError, RuntimeError, KeyError) as err:
                    rank_zero_warn(f"whitening: ignoring the unreadable cache {cache_file} ({err})")
        mean, eigenvalues, eigenvectors = covariance_eigh(flat)
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"mean": mean, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors}, cache_file)
            except OSError as err:
                rank_zero_warn(f"whitening: could not write the cache {cache_file} ({err}); the next run fits again")
        return mean, eigenvalues, eigenvectors

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Whitening":
        start = time.perf_counter()
        flat = x.reshape(len(x), -1)
        mean, eigenvalues, eigenvectors = self._decomposition(flat)
        scale = (eigenvalues + self.eps).rsqrt()
        pca = scale[:, None] * eigenvectors.T  # rows: principal axes, scaled
        matrix = eigenvectors @ pca if self.mode == "zca" else pca
        self.mean, self.matrix = mean.float(), matrix.float()
        self.eigenvalues = eigenvalues  # kept for describe() and the tests, not a buffer
        self.fit_seconds = time.perf_counter() - start
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix.numel() == 0:
            raise RuntimeError(f"{self.mode} whitening used before fit() (or before loading its state)")
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.mean.numel():
            raise ValueError(
                f"{self.mode} whitening was fitted on images of {self.mean.numel()} values, got {tuple(x.shape[1:])}: "
                f"put crops after the normalization"
            )
        return ((flat.float() - self.mean) @ self.matrix.T).view(x.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the buffers' shapes depend on the image size seen in fit(): take them from the checkpoint
        for name in ("mean", "matrix"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def describe(self) -> str:
        how = "cached decomposition" if self.cache_hit else "fitted"
        took = f" in {self.fit_seconds:.1f} s" if self.fit_seconds is not None else ""
        return f"{self.mode}: whitening of {self.mean.numel()} values per image, eps={self.eps} ({how}{took}, training split)"


def _zca(channels: int = 3, **options) -> Whitening:
    return Whitening(channels, mode="zca", **options)


def _pca(channels: int = 3, **options) -> Whitening:
    return Whitening(channels, mode="pca", **options)


NORMALIZERS: dict[str, Callable[..., Normalizer]] = {
    "none": Normalizer,
    "standardize": Standardize,
    "gcn": GlobalContrastNormalize,
    "zca": _zca,
    "pca": _pca,
    "l1": _l1,
    "l2": _l2,
    "minmax": MinMaxScale,
}


def make_normalizer(name: str, channels: int, **options) -> Normalizer:
    """The normalizer registered as ``name`` (see ``NORMALIZERS``), not yet fitted.

    ``options`` go to its constructor (``eps`` and ``cache_dir`` for zca/pca, ``scale`` for
    gcn/l1/l2, ...); an option it does not take fails with the options it does take.
    """
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalization {name!r}: choose one of {sorted(NORMALIZERS)}")
    factory = NORMALIZERS[name]
    if factory is Normalizer:
        return Normalizer()
    try:
        return factory(channels, **options)
    except TypeError as err:
        raise ValueError(f"bad options {options} for normalization {name!r}: {err}") from None


# ----- augmentations -----------------------------------------------------------------------------------

def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape an (N,) tensor to broadcast over (N, C, H, W)."""
    return values.view(-1, *([1] * (x.dim() - 1)))


class RandomErasing(nn.Module):
    """Random erasing (Zhong et al. 2017) on whole batches: with probability ``p`` an image gets one
    rectangle of area ``scale`` (fraction of the image) and aspect ratio ``ratio`` (log-uniform)
    set to ``value`` (0, the mean color after standardization). Each image draws its own rectangle
    in one vectorised call. Eval mode: identity."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> None:
        super().__init__()
        scale, ratio = tuple(scale), tuple(ratio)
        if not 0.0 <= p <= 1.0 or not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"erase needs p in [0, 1], 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; "
                             f"got p={p}, scale={scale}, ratio={ratio}")
        self.p, self.scale, self.ratio, self.value = p, scale, ratio, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n, height, width, device = x.shape[0], x.shape[-2], x.shape[-1], x.device
        area = torch.empty(n, device=device).uniform_(*self.scale) * height * width
        log_ratio = torch.empty(n, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = log_ratio.exp()
        h = (area * aspect).sqrt().round().clamp(1, height).long()
        w = (area / aspect).sqrt().round().clamp(1, width).long()
        top = (torch.rand(n, device=device) * (height - h + 1)).long()
        left = (torch.rand(n, device=device) * (width - w + 1)).long()
        rows = torch.arange(height, device=device).view(1, -1)
        cols = torch.arange(width, device=device).view(1, -1)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        chosen = torch.rand(n, device=device) < self.p
        mask = (in_rows[:, :, None] & in_cols[:, None, :]) & chosen[:, None, None]  # N, H, W
        return x.masked_fill(mask[:, None], self.value)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value}"


class RandomRotation(nn.Module):
    """Rotate each image by its own angle, uniform in [-degrees, degrees] (bilinear, ``fill`` outside),
    with one batched ``affine_grid``/``grid_sample``. Eval mode: identity."""

    def __init__(self, degrees: float = 15.0, fill: float = 0.0) -> None:
        super().__init__()
        if not 0 <= degrees <= 180:
            raise ValueError(f"rotate needs degrees in [0, 180], got {degrees}")
        self.degrees, self.fill = float(degrees), float(fill)

    @staticmethod
    def rotate(x: torch.Tensor, angles: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Rotate image i of ``x`` by ``angles[i]`` radians (counter-clockwise) about its center."""
        dtype = x.dtype
        xf = x.float() if not x.is_floating_point() else x
        cos, sin = angles.cos(), angles.sin()
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(xf.dtype)
        grid = nn.functional.affine_grid(theta, list(xf.shape), align_corners=False)
        if fill:
            xf = xf - fill
        out = nn.functional.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if fill:
            out = out + fill
        return out.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.degrees == 0:
            return x
        angles = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(self.degrees)
        return self.rotate(x, angles, self.fill)

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, fill={self.fill}"


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) normalised 1-D Gaussian kernels, one per sigma; sigma 0 gives the identity kernel."""
    offsets = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    sigma = sigma.float().view(-1, 1)
    logits = -offsets.square() / (2 * sigma.square().clamp_min(1e-12))
    kernel = torch.softmax(logits, dim=1)  # exp(.) / sum, stable for tiny sigma
    identity = (offsets == 0).float().expand_as(kernel)
    return torch.where(sigma > 0, kernel, identity)


def blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur of image i with ``sigma[i]`` (reflect padding), one grouped convolution
    per direction for the whole batch."""
    n, c, height, width = x.shape
    kernels = gaussian_kernels(sigma.to(x.device), size).to(x.dtype if x.is_floating_point() else torch.float32)
    weights = kernels.repeat_interleave(c, dim=0)  # N*C, size
    xf = (x if x.is_floating_point() else x.float()).reshape(1, n * c, height, width)
    pad = size // 2
    xf = nn.functional.pad(xf, (pad, pad, pad, pad), mode="reflect")
    xf = nn.functional.conv2d(xf, weights.view(n * c, 1, 1, size), groups=n * c)
    xf = nn.functional.conv2d(xf, weights.view(n * c, 1, size, 1), groups=n * c)
    out = xf.view(n, c, height, width)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out


def _kernel_size(sigma: float, kernel_size: int | None) -> int:
    size = kernel_size if kernel_size is not None else 2 * math.ceil(3 * sigma) + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the blur kernel size must be odd and positive, got {size}")
    return size


class RandomGaussianBlur(nn.Module):
    """With probability ``p`` blur an image with a Gaussian of sigma uniform in ``sigma`` (per image).
    Eval mode: identity."""

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 1.5), kernel_size: int | None = None) -> None:
        super().__init__()
        sigma = tuple(float(s) for s in sigma)
        if not 0.0 <= p <= 1.0 or not 0 <= sigma[0] <= sigma[1]:
            raise ValueError(f"blur needs p in [0, 1] and 0 <= sigma[0] <= sigma[1]; got p={p}, sigma={sigma}")
        self.p, self.sigma = p, sigma
        self.kernel_size = _kernel_size(sigma[1], kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.shape[0]
        sigma = torch.empty(n, device=x.device).uniform_(*self.sigma)
        sigma = torch.where(torch.rand(n, device=x.device) < self.p, sigma, torch.zeros_like(sigma))
        return blur(x, sigma, self.kernel_size)

    def extra_repr(self) -> str:
        return f"p={self.p}, sigma={self.sigma}, kernel_size={self.kernel_size}"


class TestTimeBlur(nn.Module):
    """A fixed Gaussian blur (``sigma``) of the evaluation images (validation, test, predict), as the
    course report tried; training images pass unchanged unless ``train`` is true."""

    __test__ = False  # not a pytest class

    def __init__(self, sigma: float = 1.0, kernel_size: int | None = None, train: bool = False) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"test_blur needs sigma > 0, got {sigma}")
        self.sigma, self.apply_in_training = float(sigma), train
        self.kernel_size = _kernel_size(self.sigma, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.apply_in_training:
            return x
        return blur(x, torch.full((x.shape[0],), self.sigma, device=x.device), self.kernel_size)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, kernel_size={self.kernel_size}, train={self.apply_in_training}"


class RandomHorizontalFlip(nn.Module):
    """Flip each image left-right with probability ``p``. Eval mode: identity."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip needs p in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(_per_image(flip, x), x.flip(-1), x)


class ChannelsLast(nn.Module):
    """Not an augmentation: hands the network a channels-last (NHWC) batch, which makes oneDNN's CPU
    convolutions about 25 % faster (the values are unchanged). Put it last in ``augment``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _crop_flip(crop_size: int, flip_p: float = 0.5) -> nn.Module:
    return RandomCropFlip(crop_size, padding=0, flip_p=flip_p)


def _pad_crop(crop_size: int, padding: int = 4, flip_p: float = 0.5) -> nn.Module:
    return PaddedCropFlip(padding, flip_p)


def _without_crop_size(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def factory(crop_size: int, **options) -> nn.Module:
        return cls(**options)

    factory.__name__ = cls.__name__
    return factory


# name -> factory(crop_size, **options) of a train/eval-aware batch augmentation. To add one, write a
# small nn.Module (random in train mode, deterministic in eval mode) and register it here.
AUGMENTATIONS: dict[str, Callable[..., nn.Module]] = {
    "crop_flip": _crop_flip,  # the course: random crop_size crop + flip; eval: center crop
    "pad_crop": _pad_crop,  # zero-pad 4, random crop back to the image size + flip; eval: identity
    "flip": _without_crop_size(RandomHorizontalFlip),
    "erase": _without_crop_size(RandomErasing),
    "rotate": _without_crop_size(RandomRotation),
    "blur": _without_crop_size(RandomGaussianBlur),
    "test_blur": _without_crop_size(TestTimeBlur),
    "channels_last": _without_crop_size(ChannelsLast),  # memory layout only (faster CPU convolutions)
}


def make_augmentation(name: str, crop_size: int, **options) -> nn.Module:
    """The augmentation registered as ``name`` (see ``AUGMENTATIONS``), built with ``options``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}: choose from {sorted(AUGMENTATIONS)}")
    try:
        return AUGMENTATIONS[name](crop_size, **options)
    except TypeError as err:
        raise ValueError(f"bad options {options} for augmentation {name!r}: {err}") from None
