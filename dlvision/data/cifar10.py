"""CIFAR-10 from torchvision's canonical files or from an image-folder tree, decoded once and cached."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, read_file

from dlvision.data.base import DataFormatError, DatasetNotFoundError, ImageDataModule

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_FOLDER_NAMES = ("cifar10-jpg", "cifar10")  # sub-folders of data_dir searched for train/ and test/


class CIFAR10NoChecksum(datasets.CIFAR10):
    """torchvision's CIFAR10 reader with the MD5 checks off (files must exist and unpickle)."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def load_canonical(root: Path, train: bool, download: bool, check_integrity: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels from ``root/cifar-10-batches-py`` via torchvision."""
    cls = datasets.CIFAR10 if check_integrity else CIFAR10NoChecksum
    folder = root / datasets.CIFAR10.base_folder
    try:
        data = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        raise DataFormatError(
            f"CIFAR-10 files in {folder} are incomplete or corrupted ({err}): download them again "
            f"(--data.download true) or replace them; --data.check_integrity false skips the MD5 check"
        ) from None
    except OSError as err:
        raise DatasetNotFoundError(
            f"CIFAR-10: could not download into {root} ({err}). Offline, put torchvision's cifar-10-batches-py "
            f"there, or an image folder train/<class>/* and test/<class>/* (../shared/data/unpack.sh {root}), "
            f"and leave --data.download false"
        ) from err
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
        raise DataFormatError(f"CIFAR-10 files in {folder} do not unpickle to CIFAR batches ({err!r})") from err
    images = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(data.targets, dtype=torch.long)
    if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        raise DataFormatError(f"CIFAR-10 files in {folder} hold {tuple(images.shape)} images and {len(labels)} labels")
    return images, labels


def find_image_folder(data_dir: Path) -> Path | None:
    """The folder holding ``train/<class>/`` and ``test/<class>/``: data_dir itself or a known sub-folder."""
    for candidate in (data_dir, *(data_dir / name for name in IMAGE_FOLDER_NAMES)):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _decode(path: str) -> torch.Tensor:
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise DataFormatError(f"cannot decode image {path}: {err}") from None


def decode_folder(split_dir: Path, classes: Sequence[str] | None = None, threads: int = 4) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image of ``split_dir/<class>/*`` (torchvision's ImageFolder layout) to uint8 tensors."""
    found, class_to_idx = datasets.folder.find_classes(str(split_dir))
    if classes is not None and list(found) != list(classes):
        raise DataFormatError(f"classes of {split_dir} ({found}) differ from the training classes ({list(classes)})")
    samples = datasets.folder.make_dataset(str(split_dir), class_to_idx, extensions=datasets.folder.IMG_EXTENSIONS)
    with ThreadPoolExecutor(threads) as pool:
        images = list(pool.map(_decode, [path for path, _ in samples], chunksize=256))
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        odd = next(path for (path, _), img in zip(samples, images) if tuple(img.shape) != tuple(images[0].shape))
        raise DataFormatError(f"images of {split_dir} differ in size ({sorted(shapes)}), for example {odd}")
    return torch.stack(images), torch.tensor([label for _, label in samples], dtype=torch.long), list(found)


def folder_signature(split_dir: Path) -> str:
    """A cheap fingerprint of a folder tree (file names, sizes, modification times)."""
    digest = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames.sort()
        folder = os.path.relpath(dirpath, split_dir)  # however data_dir is spelled; once per folder
        prefix = "" if folder == os.curdir else folder + os.sep
        entries = {entry.name: entry for entry in os.scandir(dirpath)}
        lines = []
        for name in sorted(filenames):
            stat = entries[name].stat() if name in entries else os.stat(os.path.join(dirpath, name))
            lines.append(f"{prefix}{name}:{stat.st_size}:{stat.st_mtime_ns}\n")
        digest.update("".join(lines).encode())
    return digest.hexdigest()


def load_image_folder(root: Path, train: bool, cache: bool = True,
                      only_refresh: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Decode ``root/{train,test}/<class>/*`` once; later calls read the uint8 tensors from a cache file.

    ``only_refresh`` makes sure the cache is up to date and returns None without reading it
    (what ``prepare_data`` needs: ``setup`` reads the tensors afterwards).
    """
    split = "train" if train else "test"
    split_dir = root / split
    signature = folder_signature(split_dir)
    cache_file = root / f".dlvision-{split}-uint8.pt"
    if cache and cache_file.is_file():
        # a memory map only to check freshness: tensors that outlive this call are read into memory,
        # so a later rewrite of the cache file cannot change them under a running job
        cached = torch.load(cache_file, weights_only=True, mmap=only_refresh)
        if cached.get("signature") == signature:
            return None if only_refresh else (cached["images"], cached["labels"])
    rank_zero_info(f"cifar10: decoding {split_dir} (once; the result is cached in {cache_file})")
    classes = None if train else datasets.folder.find_classes(str(root / "train"))[0]
    images, labels, _ = decode_folder(split_dir, classes)
    if cache:
        try:
            torch.save({"signature": signature, "images": images, "labels": labels}, cache_file)
        except OSError as err:
            rank_zero_warn(f"cifar10: could not write the decode cache {cache_file} ({err}); it will decode again next time")
    return images, labels


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, 32x32 RGB, 10 classes, from either of two layouts found under ``data_dir``:

    * torchvision's canonical ``cifar-10-batches-py`` (``download: true`` fetches it when online;
      ``check_integrity: false`` skips the MD5 check, for hand-made files);
    * an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` in ``data_dir`` or in
      ``data_dir/cifar10-jpg`` (what ``../shared/data/unpack.sh data`` lays out), decoded once and
      cached as uint8 tensors next to the images (``cache: false`` turns the cache off).
    """

    num_classes = 10
    channels = 3
    name = "cifar10"

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = False,
        check_integrity: bool = True,
        cache: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 5000,
        split_seed: int = 0,
        normalize: str = "none",
        augment: Sequence[str] = (),
        crop_size: int = 28,
        zca_eps: float = 1e-2,
        normalize_options: dict | None = None,
        augment_options: dict[str, dict] | None = None,
    ) -> None:
        self.download, self.check_integrity, self.cache = download, check_integrity, cache
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, split_seed,
                         normalize, augment, crop_size, zca_eps, normalize_options, augment_options)

    def layout(self) -> tuple[str, Path]:
        """('canonical' | 'folder', path) of the data found, or a clear error if there is none."""
        canonical = self.data_dir / datasets.CIFAR10.base_folder
        if canonical.is_dir():
            return "canonical", self.data_dir
        folder = find_image_folder(self.data_dir)
        if folder is not None:
            return "folder", folder
        if self.download:
            return "canonical", self.data_dir
        looked = ", ".join(str(p) for p in (canonical, self.data_dir / "train", *(self.data_dir / n / "train" for n in IMAGE_FOLDER_NAMES)))
        raise DatasetNotFoundError(
            f"CIFAR-10 not found under {self.data_dir} (looked for {looked}). Either pass --data.download true "
            f"(needs the internet) to fetch torchvision's cifar-10-batches-py, or lay out an image folder "
            f"train/<class>/*.png|jpg and test/<class>/* there (offline: ../shared/data/unpack.sh {self.data_dir}, "
            f"then --data.data_dir {self.data_dir})"
        )

    def prepare_data(self) -> None:
        kind, root = self.layout()
        if kind == "canonical" and self.download:
            load_canonical(root, True, True, self.check_integrity)
        elif kind == "folder" and self.cache:
            for train in (True, False):
                load_image_folder(root, train, cache=True, only_refresh=True)

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        kind, root = self.layout()
        if kind == "canonical":
            return load_canonical(root, train, False, self.check_integrity)
        images, labels = load_image_folder(root, train, self.cache)
        if images.shape[1:] != (3, 32, 32):
            raise DataFormatError(f"CIFAR-10 images in {root} must be 32x32 RGB, found {tuple(images.shape[1:])}")
        return images, labels
