"""LightningDataModules: data in memory as tensors, transforms on whole batches on the device."""

from dlvision.data.base import BatchGroup, DataFormatError, DatasetNotFoundError, ImageDataModule, InMemoryDataModule
from dlvision.data.cifar10 import CIFAR10DataModule
from dlvision.data.circles import CirclesDataModule, make_circles
from dlvision.data.mnist import MNISTDataModule

__all__ = [
    "BatchGroup",
    "CIFAR10DataModule",
    "CirclesDataModule",
    "DataFormatError",
    "DatasetNotFoundError",
    "ImageDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "make_circles",
]
