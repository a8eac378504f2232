"""Pictures of a ViT in TensorBoard: sample inputs, class-token attention maps, positional similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Rescale each image of (N, C, H, W) to [0, 1] (a constant image becomes 0)."""
    flat = x.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = (high - low).clamp_min(1e-12)
    return ((flat - low[:, None]) / scale[:, None]).view_as(x)


def heat(x: torch.Tensor) -> torch.Tensor:
    """A [0, 1] map (N, 1, H, W) as RGB in a black -> red -> yellow -> white colour ramp."""
    x = x.clamp(0, 1)
    return torch.cat([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], dim=1)


def diverging(x: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] (N, 1, H, W) as RGB: blue for -1, white for 0, red for +1."""
    x = x.clamp(-1, 1)
    pos, neg = x.clamp_min(0), (-x).clamp_min(0)
    return torch.cat([1 - neg, 1 - pos - neg, 1 - pos], dim=1)


def attention_grid(images: torch.Tensor, maps: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """One row per image: the image, then each head's class-token attention over the patches,
    upsampled to the image size (nearest, so each patch is a square) and shown as a heat map.

    images (N, C, H, W) any range, maps (N, heads, rows, cols) -> an RGB grid (3, H', W'); ``scale``
    enlarges every tile (nearest) for a readable picture of 28x28 images."""
    n, heads = maps.shape[:2]
    images = images.float().cpu()
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    height, width = images.shape[-2:]
    shown = to_unit(images)
    shown = shown.expand(-1, 3, -1, -1) if shown.shape[1] == 1 else shown[:, :3]
    up = F.interpolate(maps.float().cpu().reshape(n * heads, 1, *maps.shape[-2:]), size=(height, width),
                       mode="nearest")
    up = heat(to_unit(up)).view(n, heads, 3, height, width)
    tiles = torch.cat([shown.unsqueeze(1), up], dim=1).reshape(n * (heads + 1), 3, height, width)
    return make_grid(tiles, nrow=heads + 1, padding=2, pad_value=0.5)


def position_similarity_grid(similarity: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The ViT paper's picture: for each patch position, its cosine similarity with every other
    position, as a small (rows x cols) map placed at that position. similarity (P, P), P = rows*cols."""
    rows, cols = grid_size
    maps = similarity.float().cpu().reshape(rows * cols, 1, rows, cols)
    scale = max(1, 32 // max(rows, cols))
    maps = F.interpolate(maps, scale_factor=scale, mode="nearest")
    return make_grid(diverging(maps), nrow=cols, padding=1, pad_value=0.0)


def similarity_matrix_image(similarity: torch.Tensor, min_size: int = 256) -> torch.Tensor:
    """The (P, P) cosine-similarity matrix as an RGB image, upsampled to about ``min_size`` pixels."""
    matrix = similarity.float().cpu()[None, None]
    scale = max(1, min_size // matrix.shape[-1])
    return diverging(F.interpolate(matrix, scale_factor=scale, mode="nearest"))[0]


class ViTPictures(Callback):
    """Logs to TensorBoard (any logger whose ``experiment`` has ``add_image``):

    - ``inputs``: a grid of ``num_inputs`` training images, once at the start of fitting;
    - ``attention/class_token``: for ``num_images`` test images, the class token's attention over
      the patches, one map per head of the last block (``block``), after every ``every_n_epochs``
      validation epochs and at the end of fitting and testing;
    - ``position/similarity`` and ``position/similarity_matrix``: the cosine similarity of the
      positional embeddings of the patches (for a learned embedding it changes with training).

    The network (``pl_module.net`` or the module itself) must have ``attention_maps(x, block)``,
    ``position_similarity()`` and ``grid_size``, as ``dlvision.models.ViT`` does.
    """

    def __init__(self, num_images: int = 4, num_inputs: int = 32, every_n_epochs: int = 5, block: int = -1,
                 scale: int = 4) -> None:
        super().__init__()
        if num_images <= 0 or num_inputs <= 0 or every_n_epochs <= 0 or scale <= 0:
            raise ValueError("num_images, num_inputs, every_n_epochs and scale must be positive")
        self.scale = scale
        self.num_images, self.num_inputs = num_images, num_inputs
        self.every_n_epochs, self.block = every_n_epochs, block
        self._warned = False

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _net(pl_module: LightningModule):
        return getattr(pl_module, "net", pl_module)

    def _writers(self, trainer: Trainer) -> list:
        writers = [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]
        if not writers and not self._warned:
            rank_zero_warn("ViTPictures: no logger can take images (use a TensorBoardLogger); nothing logged")
            self._warned = True
        return writers

    @staticmethod
    def _images(trainer: Trainer, split: str, count: int, pl_module: LightningModule) -> torch.Tensor | None:
        """The first ``count`` images of a split, through the data module's eval-mode transform."""
        datamodule = getattr(trainer, "datamodule", None)
        data = getattr(datamodule, f"{split}_set", None)
        if data is None or not hasattr(data, "inputs"):
            return None
        x = data.inputs[:count].to(pl_module.device)
        transform = getattr(datamodule, "transform", None)
        if transform is not None:
            was_training = transform.training
            transform.eval()
            transform.to(x.device)
            x = transform(x)
            transform.train(was_training)
        return x.float()

    @rank_zero_only
    def log_pictures(self, trainer: Trainer, pl_module: LightningModule, step: int | None = None) -> None:
        """Log the attention maps and the positional similarity now."""
        writers = self._writers(trainer)
        net = self._net(pl_module)
        if not writers or not hasattr(net, "attention_maps"):
            return
        step = trainer.global_step if step is None else step
        images = self._images(trainer, "test", self.num_images, pl_module)
        was_training = net.training
        net.eval()
        try:
            if images is not None:
                grid = attention_grid(images, net.attention_maps(images, block=self.block), self.scale)
                for writer in writers:
                    writer.add_image("attention/class_token", grid, step)
            similarity = net.position_similarity()
            for writer in writers:
                writer.add_image("position/similarity", position_similarity_grid(similarity, net.grid_size), step)
                writer.add_image("position/similarity_matrix", similarity_matrix_image(similarity), step)
        finally:
            net.train(was_training)

    # ---- hooks -----------------------------------------------------------------------------------
    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images = self._images(trainer, "train", self.num_inputs, pl_module)
        if images is None:
            return
        grid = make_grid(to_unit(images.cpu()), nrow=8, padding=2, pad_value=0.5)
        for writer in self._writers(trainer):
            writer.add_image("inputs", grid, 0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.log_pictures(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_pictures(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_pictures(trainer, pl_module)
