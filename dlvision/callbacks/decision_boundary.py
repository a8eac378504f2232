"""The decision boundary of a 2-D classifier over the course's 40x40 grid, as an image.

COURSE.md section 1 classifies a 40x40 grid over [-2, 2)² (step 0.1) to draw the decision boundary
with the train and test points. ``render_boundary`` draws it with tensor operations only (no
plotting library): each pixel takes the colour of its most probable class, paler where the model is
less sure; a dark line follows the boundary; training points are filled dots, test points rings.
``DecisionBoundary`` logs that picture to TensorBoard during training and saves the last one as a
PNG in the run folder. The SVM tool draws its boundaries with the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

# tab10 colours: class 0 blue, class 1 orange, ...
PALETTE = torch.tensor(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
    dtype=torch.float32,
)


def course_grid(low: float = -2.0, step: float = 0.1, size: int = 40) -> torch.Tensor:
    """The grid points as a (size, size, 2) tensor of (x1, x2): row 0 is the top (largest x2),
    column 0 the left (smallest x1), so that it reads as an image. Values low, low + step, ...."""
    if size < 2 or step <= 0:
        raise ValueError(f"the grid needs size >= 2 and step > 0, got size={size}, step={step}")
    ticks = low + step * torch.arange(size, dtype=torch.float64)
    x2, x1 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")
    return torch.stack([x1, x2], dim=-1)


@torch.no_grad()
def grid_probabilities(
    predict: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, logits: bool = True
) -> torch.Tensor:
    """Class probabilities (size, size, C) of ``predict`` (points (n, 2) -> (n, C) outputs) on the grid.

    ``logits=True`` applies a softmax to the outputs; otherwise they are taken as probabilities.
    """
    size = grid.shape[0]
    out = predict(grid.reshape(-1, 2))
    if out.ndim != 2 or out.shape[0] != size * size:
        raise ValueError(f"the classifier must map ({size * size}, 2) points to (n, classes) outputs, got {tuple(out.shape)}")
    probs = out.double().softmax(dim=1) if logits else out.double()
    return probs.reshape(size, size, -1).cpu()


def _disk(radius: int) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    keep = dy**2 + dx**2 <= radius**2 + radius // 2
    return torch.stack([dy[keep], dx[keep]], dim=1)


def _stamp(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, radius: int, colors: torch.Tensor) -> None:
    """Paint a disk of ``radius`` pixels at every (row, col) in ``image`` (H, W, 3), in place.

    One indexed write for all points and offsets (a loop over the offsets cost ~20 ms a picture):
    where disks overlap, the pixel keeps the write that comes last in offset-major order, as if the
    disk's offsets were painted one after another over all points.
    """
    height, width = image.shape[:2]
    disk = _disk(radius)
    r = (disk[:, :1] + rows[None]).reshape(-1)  # (offsets * points,), offset-major
    c = (disk[:, 1:] + cols[None]).reshape(-1)
    paint = colors.repeat(len(disk), 1)
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    pixel, paint = r[inside] * width + c[inside], paint[inside]
    if pixel.numel() == 0:
        return
    order = torch.arange(len(pixel))
    last = torch.full((height * width,), -1, dtype=torch.long).scatter_reduce(0, pixel, order, "amax")
    winners = last[last >= 0]
    image.view(-1, image.shape[-1])[pixel[winners]] = paint[winners].to(image.dtype)


def points_layer(
    points: list[tuple[torch.Tensor, torch.Tensor]],
    size: int = 40,
    low: float = -2.0,
    step: float = 0.1,
    scale: int = 8,
) -> torch.Tensor:
    """The data points of ``render_boundary`` as an RGBA layer (size * scale, size * scale, 4): colour
    where a point is drawn (alpha 1), transparent elsewhere. The first set of (inputs (n, 2),
    labels (n,)) is drawn as filled dots (training points), the next ones as rings (test points)."""
    pixels = size * scale
    layer = torch.zeros(pixels, pixels, 4)
    origin = low - step / 2  # pixel position of (x1, x2), row 0 at the top
    radius = max(2, (3 * scale) // 8)
    for k, (inputs, labels) in enumerate(points):
        inputs = inputs.detach().double().cpu()
        labels = labels.detach().long().cpu()
        cols = ((inputs[:, 0] - origin) / step * scale).floor().long()
        rows = ((origin + size * step - inputs[:, 1]) / step * scale).floor().long()
        opaque = torch.ones(len(labels), 1)
        colors = PALETTE[labels % len(PALETTE)] * 0.8  # a shade darker than the background
        _stamp(layer, rows, cols, radius + 1, torch.cat([torch.zeros_like(colors), opaque], 1))  # black outline
        _stamp(layer, rows, cols, radius, torch.cat([colors, opaque], 1))
        if k > 0:  # test points: rings
            _stamp(layer, rows, cols, max(1, radius - 2), torch.cat([torch.full_like(colors, 255.0), opaque], 1))
    return layer


def render_boundary(
    probs: torch.Tensor,
    points: list[tuple[torch.Tensor, torch.Tensor]] = (),
    low: float = -2.0,
    step: float = 0.1,
    scale: int = 8,
    layer: torch.Tensor | None = None,
) -> torch.Tensor:
    """A uint8 (H, W, 3) picture of the class probabilities ``probs`` (size, size, C) of the grid.

    Each grid value is the centre of a ``scale`` x ``scale`` block of pixels; the probabilities
    are interpolated between them. ``points`` lists (inputs (n, 2), labels (n,)) sets: the first is
    drawn as filled dots (training points), the next ones as rings (test points). ``layer``, the
    ``points_layer`` of fixed points drawn once, replaces ``points`` when the same points are drawn
    over many pictures.
    """
    if probs.ndim != 3 or probs.shape[0] != probs.shape[1]:
        raise ValueError(f"probs must be (size, size, classes), got {tuple(probs.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    size, _, classes = probs.shape
    if classes > len(PALETTE):
        raise ValueError(f"render_boundary draws at most {len(PALETTE)} classes, got {classes}")
    if classes == 1:  # a single score: probability of class 1
        probs = torch.cat([1 - probs, probs], dim=2)
        classes = 2
    pixels = size * scale
    smooth = F.interpolate(probs.permute(2, 0, 1)[None].float(), size=(pixels, pixels), mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0)
    confidence, winner = smooth.max(dim=2)
    # colour: the winner's colour, mixed with white from 80 % (unsure) to 35 % (sure)
    sureness = ((confidence - 1 / classes) / (1 - 1 / classes)).clamp(0, 1)
    white_share = (0.8 - 0.45 * sureness)[..., None]
    image = white_share * 255 + (1 - white_share) * PALETTE[winner]
    # the boundary: pixels whose right or lower neighbour is won by another class
    edge = torch.zeros(pixels, pixels, dtype=torch.bool)
    edge[:, :-1] |= winner[:, 1:] != winner[:, :-1]
    edge[:-1, :] |= winner[1:, :] != winner[:-1, :]
    image[edge] = 40.0
    if layer is None:
        layer = points_layer(points, size, low, step, scale)
    elif points:
        raise ValueError("render_boundary takes points or their layer, not both")
    if layer.shape != (pixels, pixels, 4):
        raise ValueError(f"the points layer must be ({pixels}, {pixels}, 4) for this grid, got {tuple(layer.shape)}")
    drawn = layer[..., 3] > 0
    image[drawn] = layer[..., :3][drawn]
    return image.round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 (H, W, 3) image as a PNG (torchvision's encoder)."""
    from torchvision.io import write_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image.permute(2, 0, 1).contiguous(), str(path))
    return path


def add_png(writer, tag: str, image: torch.Tensor, step: int, compression_level: int = 1) -> None:
    """Log a uint8 (H, W, C) image to a TensorBoard ``SummaryWriter`` as a PNG of ``compression_level``.

    ``add_image`` encodes at zlib level 6 through PIL: about 20 ms for a 320x320 picture, against
    7 ms at level 1 with torchvision's encoder (a file about a third larger, the same pixels).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.io import encode_png

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"add_png takes a uint8 (H, W, 1|3|4) image, got {image.dtype} {tuple(image.shape)}")
    if not isinstance(writer, SummaryWriter):  # e.g. tensorboardX's writer, with its own protocol buffers
        writer.add_image(tag, image, step, dataformats="HWC")
        return
    height, width, channels = image.shape
    png = encode_png(image.permute(2, 0, 1).contiguous().cpu(), compression_level=compression_level)
    picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png.numpy().tobytes())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)


class DecisionBoundary(Callback):
    """Draw the decision boundary over the course's grid during training (2-D inputs only).

    A picture (see ``render_boundary``) with the data module's train and test points is logged to
    every TensorBoard logger under ``tag`` before training, every ``every_n_epochs`` epochs and at
    the end; the last one is saved as ``filename`` in the run folder (``trainer.log_dir``).
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        low: float = -2.0,
        step: float = 0.1,
        size: int = 40,
        scale: int = 8,
        tag: str = "decision_boundary",
        filename: str | None = "decision_boundary.png",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.grid = course_grid(low, step, size)
        self.every_n_epochs = every_n_epochs
        self.low, self.step, self.scale = low, step, scale
        render_boundary(torch.full((size, size, 2), 0.5), [], low, step, scale)  # checks scale early
        self.tag, self.filename = tag, filename
        self.last_image: torch.Tensor | None = None
        self.saved_path: Path | None = None
        self._last_step: int | None = None
        self._layer: torch.Tensor | None = None  # the data points, drawn once per fit

    def _points(self, trainer: Trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        datamodule = getattr(trainer, "datamodule", None)
        points = []
        for name in ("train_set", "test_set"):
            data = getattr(datamodule, name, None)
            if data is not None and hasattr(data, "inputs"):
                points.append((data.inputs, data.targets))
        return points

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for inputs, _ in self._points(trainer):
            if inputs.ndim != 2 or inputs.shape[1] != 2:
                raise ValueError(
                    f"DecisionBoundary draws 2-D inputs (the circles set), but "
                    f"{type(trainer.datamodule).__name__} gives inputs of shape {tuple(inputs.shape[1:])}: "
                    f"remove the callback for this data"
                )
        self._layer = self._points_layer(trainer)

    def _points_layer(self, trainer: Trainer) -> torch.Tensor:
        return points_layer(self._points(trainer), self.grid.shape[0], self.low, self.step, self.scale)

    def image(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        """The current picture, uint8 (H, W, 3)."""
        param = next(pl_module.parameters(), None)
        device = param.device if param is not None else pl_module.device
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        was_training = pl_module.training
        pl_module.eval()
        try:
            probs = grid_probabilities(pl_module, self.grid.to(device, dtype))
        finally:
            pl_module.train(was_training)
        layer = self._layer if self._layer is not None else self._points_layer(trainer)
        return render_boundary(probs, [], self.low, self.step, self.scale, layer=layer)

    @rank_zero_only
    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._last_step == trainer.global_step and self.last_image is not None:
            return
        self.last_image = self.image(trainer, pl_module)
        self._last_step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                add_png(logger.experiment, self.tag, self.last_image, trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = None
        self._log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module)
        if self.filename and self.last_image is not None:
            # not trainer.log_dir: it broadcasts across processes, and only rank zero runs this hook
            folder = Path(getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir)
            self.saved_path = save_png(self.last_image, folder / self.filename)
            rank_zero_info(f"decision boundary saved to {self.saved_path}")
