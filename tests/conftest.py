"""Small data sets written in the real formats (IDX, CIFAR pickles, image folders, .mat), so the
real torchvision readers are exercised without the real data."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file: magic (0, 0, 0x08, ndim), big-endian sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images whose brightness pattern depends on the label, so a model can learn them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), *shape)).astype(np.int32)
    for i, label in enumerate(labels):
        flat = images[i].reshape(-1)
        band = flat.size // 10
        flat[label * band : (label + 1) * band] += 180
    return images.clip(0, 255).astype(np.uint8)


def make_mnist(root: Path, name: str = "MNIST", n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """Tiny MNIST-format IDX files in ``root/name/raw``."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(root / name / "raw" / f"{prefix}-images-idx3-ubyte", class_images(labels, (28, 28), seed + n))
        write_idx(root / name / "raw" / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def make_cifar_canonical(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """A tiny ``cifar-10-batches-py`` with the real pickle layout (five data batches, test, meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        data = class_images(labels, (3, 32, 32), seed + k).reshape(n, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data, "filenames": []}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR_CLASSES), "num_cases_per_batch": per_batch}, f)
    return root


def make_image_folder(root: Path, n_train_per_class: int = 6, n_test_per_class: int = 3, size: int = 32,
                      fmt: str = "png", seed: int = 0) -> Path:
    """``root/{train,test}/<class>/i.png`` images written with torchvision's encoders."""
    from torchvision.io import encode_jpeg, encode_png

    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        for label, name in enumerate(CIFAR_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = class_images(np.full(n, label), (3, size, size), seed + label + (100 if split == "test" else 0))
            for i, image in enumerate(images):
                tensor = torch.from_numpy(image)
                encoded = encode_png(tensor) if fmt == "png" else encode_jpeg(tensor, quality=95)
                (folder / f"{i:04d}.{fmt}").write_bytes(encoded.numpy().tobytes())
    return root


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return make_mnist(tmp_path / "data")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return make_cifar_canonical(tmp_path / "data")


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data" / "cifar10-jpg").parent


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own folder, so nothing (logs, saved configs) lands in the checkout."""
    monkeypatch.chdir(tmp_path)
