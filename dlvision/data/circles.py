"""The 2-D toy set of chapter 1: an outer ring (class 0) around an inner disc (class 1)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dlvision.data.base import DataFormatError, DatasetNotFoundError, InMemoryDataModule


def make_circles(n: int, noise: float = 0.2, factor: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points (half per class, rounded down for the inner class) of a noisy ring around a disc.

    Class 0 lies on the unit circle, class 1 on a circle of radius ``factor``; angles are uniform
    and every coordinate gets Gaussian noise of std ``noise`` (as scikit-learn's ``make_circles``).
    Returns float32 points (n x 2) and int64 labels, shuffled.
    """
    if n < 2 or noise < 0 or not 0 < factor < 1:
        raise ValueError(f"make_circles needs n >= 2, noise >= 0 and 0 < factor < 1; got {n}, {noise}, {factor}")
    gen = torch.Generator().manual_seed(seed)
    n_outer = n - n // 2
    labels = torch.cat([torch.zeros(n_outer, dtype=torch.long), torch.ones(n // 2, dtype=torch.long)])
    radius = torch.where(labels == 0, 1.0, factor).double()
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
    points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    points += noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    order = torch.randperm(n, generator=gen)
    return points[order].float(), labels[order]


def load_circles_mat(path: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the course's ``circles.mat`` (Xtrain/Xtest 200x2, one-hot Ytrain/Ytest) with scipy."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            "reading circles.mat needs scipy: pip install scipy (or pip install -e '.[mat]'), "
            "or leave data.mat_path unset to use the built-in generator"
        ) from None
    if not path.is_file():
        raise DatasetNotFoundError(
            f"circles .mat file not found at {path}: copy the course's circles.mat there "
            f"(for example ../shared/data/unpack.sh data gives data/circles/circles.mat), "
            f"or leave data.mat_path unset to use the built-in generator"
        )
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a bad file
        raise DataFormatError(f"could not read {path} as a MATLAB file: {err}") from err
    split = "train" if train else "test"
    try:
        x, y = mat[f"X{split}"], mat[f"Y{split}"]
    except KeyError as err:
        raise DataFormatError(f"{path} has no {err.args[0]!r} array (expected Xtrain, Ytrain, Xtest, Ytest)") from None
    if x.ndim != 2 or x.shape[1] != 2 or y.shape[0] != x.shape[0]:
        raise DataFormatError(f"{path}: X{split} must be N x 2 and Y{split} N x classes, got {x.shape} and {y.shape}")
    labels = torch.as_tensor(y).argmax(dim=1) if y.ndim == 2 and y.shape[1] > 1 else torch.as_tensor(y).reshape(-1)
    return torch.as_tensor(x, dtype=torch.float32), labels.long()


class CirclesDataModule(InMemoryDataModule):
    """Circles: a seeded offline generator (``n_train``/``n_test`` points), or ``mat_path``'s file.

    Points are float (N, 2) tensors used as they are (no normalization, no augmentation).
    """

    num_classes = 2
    name = "circles"

    def __init__(
        self,
        data_dir: str | Path = "data",
        mat_path: str | Path | None = None,
        n_train: int = 200,
        n_test: int = 200,
        noise: float = 0.2,
        factor: float = 0.3,
        generator_seed: int = 0,
        batch_size: int = 10,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, split_seed)
        if mat_path is None and (n_train < 2 or n_test < 2 or noise < 0 or not 0 < factor < 1):
            raise ValueError(
                f"circles generator needs n_train, n_test >= 2, noise >= 0 and 0 < factor < 1; "
                f"got {n_train}, {n_test}, {noise}, {factor}"
            )
        self.mat_path = None if mat_path is None else Path(mat_path).expanduser()
        self.n_train, self.n_test = n_train, n_test
        self.noise, self.factor, self.generator_seed = noise, factor, generator_seed

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mat_path is not None:
            return load_circles_mat(self.mat_path, train)
        # train and test come from different seeds of the same distribution
        n = self.n_train if train else self.n_test
        return make_circles(n, self.noise, self.factor, seed=2 * self.generator_seed + (0 if train else 1))
