"""MNIST and Fashion-MNIST through torchvision, held in memory as uint8 (N, 1, 28, 28) tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torchvision import datasets

from dlvision.data.base import DataFormatError, DatasetNotFoundError, ImageDataModule

VARIANTS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}


def load_torchvision_mnist(
    cls: type[datasets.MNIST], root: Path, train: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and int64 labels, read by torchvision's own IDX reader."""
    folder = root / cls.__name__ / "raw"
    try:
        data = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        if "downloading" in str(err).lower():
            raise DatasetNotFoundError(
                f"{cls.__name__}: the download into {folder} failed (no internet?). Offline, copy the four "
                f"IDX files there yourself (for example ../shared/data/unpack.sh {root})"
            ) from err
        if "not found" in str(err).lower():
            raise DatasetNotFoundError(
                f"{cls.__name__} not found: looked for its IDX files in {folder}. Either pass "
                f"--data.download true (needs the internet) or put train-images-idx3-ubyte, "
                f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there "
                f"(offline: ../shared/data/unpack.sh {root})"
            ) from None
        raise DataFormatError(f"could not read {cls.__name__} from {folder}: {err}") from err
    except OSError as err:  # a failed download (no network) or an unreadable file
        raise DatasetNotFoundError(
            f"{cls.__name__}: could not get the files into {folder} ({err}). Offline, copy the four IDX "
            f"files there yourself (for example ../shared/data/unpack.sh {root})"
        ) from err
    except (AssertionError, ValueError, IndexError) as err:
        raise DataFormatError(
            f"{cls.__name__} files in {folder} are corrupt or not IDX files ({err!r}): delete them and copy "
            f"or download them again"
        ) from err
    images, labels = data.data, data.targets
    if images.ndim != 3 or len(images) != len(labels):
        raise DataFormatError(
            f"{cls.__name__} files in {folder} do not match: images {tuple(images.shape)}, labels {tuple(labels.shape)}"
        )
    return images.unsqueeze(1).contiguous(), labels.long()


class MNISTDataModule(ImageDataModule):
    """MNIST (or Fashion-MNIST with ``variant: fashion_mnist``), 28x28 grayscale, 10 classes."""

    num_classes = 10
    channels = 1

    def __init__(
        self,
        data_dir: str | Path = "data",
        variant: Literal["mnist", "fashion_mnist"] = "mnist",
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 5000,
        split_seed: int = 0,
        normalize: str = "none",
        augment: Sequence[str] = (),
        crop_size: int = 28,
        augment_options: dict[str, dict] | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown MNIST variant {variant!r}: choose one of {sorted(VARIANTS)}")
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, split_seed,
                         normalize, augment, crop_size, augment_options=augment_options)
        self.variant, self.download = variant, download
        self.name = variant

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                load_torchvision_mnist(VARIANTS[self.variant], self.data_dir, train, download=True)

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_torchvision_mnist(VARIANTS[self.variant], self.data_dir, train, download=False)
