"""The shared base of every data module: data held in memory as tensors, a seeded validation split,
whole-batch loading, and normalization/augmentation run on the device after the batch transfer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dlvision.data.transforms import Normalizer, ToFloat, make_augmentation, make_normalizer


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where the configuration says; the message says how to provide it."""


class DataFormatError(ValueError):
    """Data files exist but are corrupt or do not match the expected format."""


class TensorBatches(Dataset):
    """Inputs and labels held as tensors; ``__getitems__`` hands a DataLoader a whole batch at once.

    The DataLoader then slices the tensors with the sampler's indices (one indexing call per
    batch) instead of fetching and collating samples one by one.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise DataFormatError(f"{len(inputs)} inputs but {len(targets)} labels")
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.inputs[index], self.targets[index]


class BatchGroup(list):
    """Several consecutive training batches handed over at once, as ``[(x, y), ...]``.

    Made by a data module whose training loader groups batches (``group_train_batches``); a
    ``dlvision.Classifier`` with ``steps_per_execution > 1`` takes one optimizer step per batch.
    """


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for ``TensorBatches``: the batch is already formed."""
    return batch


def split_sizes(n: int, val_size: int | float) -> int:
    """Number of validation samples out of ``n`` for a count (int >= 0) or a fraction in [0, 1)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size < 0:
        raise ValueError(f"val_size must be a count >= 0 or a fraction in [0, 1), got {val_size!r}")
    if isinstance(val_size, float) and val_size < 1:
        count = int(round(n * val_size))
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise ValueError(f"val_size={val_size} is neither a whole count nor a fraction below 1")
    if count >= n:
        raise ValueError(
            f"val_size={val_size} asks for {count} validation samples but the training set has only {n}: "
            f"use a smaller count or a fraction below 1"
        )
    return count


class InMemoryDataModule(LightningDataModule):
    """Base for dlvision's data modules. Subclasses implement ``load(train)`` returning (inputs, labels).

    ``val_size`` (a count or a fraction) is held out of the training set with a seeded permutation
    (``split_seed``); ``val_size=0`` validates on the test split, as the course's loops do.
    Inputs stay in memory; batches are made by slicing, then ``on_after_batch_transfer`` runs the
    ``transform`` pipeline (``train()`` mode in training, ``eval()`` mode otherwise) on the device.
    """

    num_classes: int = 0
    name: str = "data"

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be at least 1 (or null), got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        split_sizes(10**9, val_size)  # validates the type and range early
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.transform: nn.Module = nn.Identity()
        self.train_set: TensorBatches | None = None
        self.val_set: TensorBatches | None = None
        self.test_set: TensorBatches | None = None
        self._pending_state: dict | None = None  # transform state from a checkpoint, before setup()
        self.train_batches_per_call = 1  # set by the model (Classifier.steps_per_execution)

    # ----- to implement -----------------------------------------------------------------------
    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (inputs, int64 labels) of the training or the test split."""
        raise NotImplementedError

    def build_transform(self, train_inputs: torch.Tensor) -> nn.Module:
        """The batch pipeline, fitted on the training inputs (after the validation split)."""
        return nn.Identity()

    # ----- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self.load(train=True)
        test_x, test_y = self.load(train=False)
        n_val = split_sizes(len(y), self.val_size)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        train_idx, val_idx = order[n_val:], order[:n_val]
        self.train_set = TensorBatches(x[train_idx], y[train_idx])
        self.test_set = TensorBatches(test_x, test_y)
        if n_val:
            self.val_set = TensorBatches(x[val_idx], y[val_idx])
        else:
            self.val_set = self.test_set
            rank_zero_info(f"{self.name}: val_size=0, the test split serves as validation set")
        self.transform = self.build_transform(self.train_set.inputs)
        rank_zero_info(
            f"{self.name}: {len(self.train_set)} train, {len(val_idx)} val, {len(self.test_set)} test samples"
        )

    def group_train_batches(self, count: int) -> None:
        """Hand over ``count`` consecutive training batches per loader item (a ``BatchGroup``).

        The training loader then draws ``count * batch_size`` samples at a time from the same
        shuffled order, so the batches, and the training, are those of ``count = 1``; the transform
        runs once on the whole group. Evaluation loaders are not affected.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"the number of batches per call must be an integer >= 1, got {count!r}")
        self.train_batches_per_call = count

    def _loader(self, data: TensorBatches | None, train: bool) -> DataLoader:
        if data is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return DataLoader(
            data,
            batch_size=self.batch_size * self.train_batches_per_call if train else self.eval_batch_size,
            shuffle=train,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # page-locked batches let a GPU copy them asynchronously (no effect on the CPU)
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Normalize and augment the batch where it lives: random in training, deterministic else."""
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        if self.transform.training != training:
            self.transform.train(training)
        x = self.apply_transform(x)
        if training and self.train_batches_per_call > 1:
            return BatchGroup(zip(x.split(self.batch_size), y.split(self.batch_size)))
        return x, y

    def apply_transform(self, x: torch.Tensor) -> torch.Tensor:
        self.transform.to(x.device)
        return self.transform(x)

    def state_dict(self) -> dict:
        """The fitted normalization statistics travel in checkpoints."""
        return {"transform": self.transform.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.train_set is None:
            self._pending_state = state_dict
        else:
            self.transform.load_state_dict(state_dict["transform"])


class ImageDataModule(InMemoryDataModule):
    """An image data module: uint8 (N, C, H, W) tensors, a normalizer and a list of augmentations.

    ``normalize`` names a normalizer fitted on the training split (``none``, ``standardize``, ...);
    ``augment`` lists augmentations applied in order after normalization (``crop_flip``: random
    ``crop_size`` crop + horizontal flip in training, center crop otherwise; see ``AUGMENTATIONS``).
    ``zca_eps`` regularises zca/pca whitening; ``normalize_options`` and ``augment_options``
    (``{name: {option: value}}``) pass further options to the normalizer and the augmentations.
    """

    channels: int = 1

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        normalize: str = "none",
        augment: Sequence[str] = (),
        crop_size: int = 28,
        zca_eps: float = 1e-2,
        normalize_options: dict | None = None,
        augment_options: dict[str, dict] | None = None,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, split_seed)
        self.normalize = normalize
        self.augment = list(augment)
        self.crop_size = crop_size
        self.zca_eps = zca_eps
        self.normalize_options = dict(normalize_options or {})
        self.augment_options = {name: dict(options or {}) for name, options in (augment_options or {}).items()}
        unused = sorted(set(self.augment_options) - set(self.augment))
        if unused:
            raise ValueError(f"augment_options for {unused}, which are not in augment={self.augment}")
        # build once now so that unknown names and bad options fail at construction, not at the first batch
        self._make_normalizer()
        for name in self.augment:
            make_augmentation(name, crop_size, **self.augment_options.get(name, {}))

    def _make_normalizer(self) -> Normalizer:
        """The (unfitted) normalizer with its options: ``zca_eps`` and a fit cache next to the data for zca/pca."""
        options = dict(self.normalize_options)
        if self.normalize in ("zca", "pca"):
            options.setdefault("eps", self.zca_eps)
            if getattr(self, "cache", True):
                options.setdefault("cache_dir", self.data_dir)
        return make_normalizer(self.normalize, self.channels, **options)

    def build_transform(self, train_inputs: torch.Tensor) -> nn.Module:
        normalizer: Normalizer = self._make_normalizer()
        pending = self._pending_state
        if pending is None:
            normalizer.fit(ToFloat()(train_inputs))
        if self.normalize != "none":
            rank_zero_info(f"{self.name}: {normalizer.describe()}")
        transform = nn.Sequential(
            ToFloat(), normalizer,
            *(make_augmentation(name, self.crop_size, **self.augment_options.get(name, {})) for name in self.augment)
        )
        if pending is not None:
            transform.load_state_dict(pending["transform"])
        return transform
