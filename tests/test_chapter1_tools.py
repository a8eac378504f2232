"""Chapter 1: the decision-boundary pictures, the SVM bonus and the gradient-cost tool."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.io import decode_png, read_file

from dlvision.callbacks import DecisionBoundary
from dlvision.callbacks.decision_boundary import PALETTE, course_grid, grid_probabilities, render_boundary
from dlvision.cli import main as dlvision_main
from dlvision.data import CirclesDataModule, MNISTDataModule
from dlvision.models import MLP
from dlvision.tasks import ScratchClassifier
from dlvision.tools import gradient_cost, svm


# ----- the grid and the picture ----------------------------------------------------------------------
def test_course_grid_is_40_by_40_over_minus_2_to_2_step_0_1():
    grid = course_grid()
    assert grid.shape == (40, 40, 2)
    ticks = torch.round(grid[0, :, 0] * 10).long()
    assert ticks.tolist() == list(range(-20, 20))  # x1 = -2.0, -1.9, ..., 1.9 left to right
    assert grid[0, 0, 1] == pytest.approx(1.9) and grid[-1, 0, 1] == pytest.approx(-2.0)  # x2 top to bottom


def test_render_boundary_shape_colours_and_points():
    # class 1 on the left half of the grid, class 0 on the right
    probs = torch.zeros(40, 40, 2)
    probs[:, :20, 1] = 1
    probs[:, 20:, 0] = 1
    image = render_boundary(probs, scale=8)
    assert image.shape == (320, 320, 3) and image.dtype == torch.uint8
    left, right = image[160, 40].float(), image[160, 280].float()
    assert torch.dot(left - 255, PALETTE[1] - 255) > 0 and torch.dot(right - 255, PALETTE[0] - 255) > 0
    assert (image[:, 155:165].float().sum(dim=2) < 200).any(dim=1).all()  # the dark boundary line
    # a training point of class 1 at (1.5, 1.5) is drawn at its pixel, dark outline around it
    with_point = render_boundary(probs, [(torch.tensor([[1.5, 1.5]]), torch.tensor([1]))], scale=8)
    row, col = int((1.95 - 1.5) / 0.1 * 8), int((1.5 + 2.05) / 0.1 * 8)
    assert not torch.equal(with_point[row, col], image[row, col])
    assert torch.equal(with_point[:, :100], image[:, :100])  # nothing drawn elsewhere
    with pytest.raises(ValueError, match="size, size, classes"):
        render_boundary(torch.zeros(40, 30, 2))


def fit_circles(tmp_path, epochs: int, every: int, impl: str = "manual"):
    seed_everything(3)
    boundary = DecisionBoundary(every_n_epochs=every)
    model = ScratchClassifier(MLP(2, [10], 2, "tanh", init_std=0.3), impl=impl,
                              optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    first = {}

    class First(Callback):  # the picture before any training, for comparison
        def on_train_start(self, trainer, pl_module):
            first["image"] = boundary.image(trainer, pl_module)

    trainer = Trainer(max_epochs=epochs, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[First(), boundary],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, datamodule=CirclesDataModule(n_train=200, n_test=100, batch_size=20))
    return trainer, boundary, first["image"], model


def test_decision_boundary_is_logged_saved_and_changes_as_the_model_learns(tmp_path):
    trainer, boundary, before, model = fit_circles(tmp_path, epochs=12, every=5)
    # the final PNG in the run folder, the picture of the trained model
    assert boundary.saved_path == tmp_path / "run" / "version_0" / "decision_boundary.png"
    saved = decode_png(read_file(str(boundary.saved_path)))
    assert saved.shape == (3, 320, 320)
    assert torch.equal(saved.permute(1, 2, 0), boundary.last_image)
    # it changed while learning, and now the centre is class 1 (inner disc), the corners class 0
    assert (before != boundary.last_image).any(dim=2).float().mean() > 0.2
    probs = grid_probabilities(model, course_grid().float())
    assert probs[20, 20, 1] > 0.8 and probs[0, 0, 0] > 0.8 and probs[-1, -1, 0] > 0.8
    assert trainer.callback_metrics["val/acc"] > 0.85
    # TensorBoard: before training, after epochs 5 and 10, and at the end
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    pictures = events.Images("decision_boundary")
    assert [e.step for e in pictures] == [0, 50, 100, 120]
    # the last one, decoded from the event file, is the picture itself (PNG is lossless)
    logged = decode_png(torch.frombuffer(bytearray(pictures[-1].encoded_image_string), dtype=torch.uint8))
    assert (pictures[-1].width, pictures[-1].height) == (320, 320)
    assert torch.equal(logged.permute(1, 2, 0), boundary.last_image)


def test_decision_boundary_rejects_data_that_is_not_2d(mnist_dir):
    model = ScratchClassifier(MLP(784, [8], 10), impl="optim")
    trainer = Trainer(max_epochs=1, logger=False, callbacks=[DecisionBoundary()], enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    with pytest.raises(ValueError, match="draws 2-D inputs"):
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=mnist_dir, val_size=20))
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        DecisionBoundary(every_n_epochs=0)


# ----- SVM bonus -------------------------------------------------------------------------------------
def read_results(path) -> dict[tuple[str, float], dict]:
    with open(path) as f:
        return {(r["kernel"], float(r["C"])): r for r in csv.DictReader(f)}


def test_svm_table_on_generated_circles(tmp_path, capsys):
    out = tmp_path / "svm"
    code = dlvision_main(["svm", "--kernel", "linear", "poly", "rbf", "sigmoid", "--C", "0.01", "1",
                          "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| kernel | C=0.01 | C=1 | best |" in text
    for kernel in svm.KERNELS:
        assert f"| {kernel} |" in text
    results = read_results(out / "results.csv")
    assert len(results) == 8
    assert float(results[("rbf", 1.0)]["test_acc"]) > 0.9  # the kernel that fits rings
    assert float(results[("linear", 1.0)]["test_acc"]) < 0.7  # a line cannot separate them
    montage = decode_png(read_file(str(out / "svm_boundaries.png")))
    assert montage.shape[1:] == (4 * 200 + 5 * 4, 2 * 200 + 3 * 4)  # 4 kernels x 2 C, 200 px tiles
    assert (out / "svm_rbf_C1.png").is_file()


def test_svm_on_mnist_files(mnist_dir, tmp_path, capsys):
    code = svm.main(["--data", "mnist", "--data-dir", str(mnist_dir), "--kernel", "linear", "rbf", "--C", "1",
                     "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "120 train, 40 test" in text and "decision boundaries" not in text  # not 2-D: no pictures
    results = read_results(tmp_path / "results.csv")
    assert float(results[("linear", 1.0)]["test_acc"]) > 0.8  # the tiny set is easy by construction


def test_svm_without_scikit_learn_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    assert svm.main(["--kernel", "rbf", "--C", "1"]) == 2
    assert "pip install -e '.[svm]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--C", "-1"], "C must be > 0"),
        (["--kernel", "cubic"], "invalid choice: 'cubic'"),
        (["--gamma", "big"], "gamma must be 'scale', 'auto' or a number"),
        (["--data", "mnist", "--mat-path", "x.mat"], "--mat-path is for --data circles"),
    ],
)
def test_svm_bad_options_fail_with_a_clear_message(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        svm.main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_svm_missing_mat_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="circles .mat file not found"):
        svm.main(["--mat-path", str(tmp_path / "none.mat"), "--out", str(tmp_path)])


# ----- gradient cost ----------------------------------------------------------------------------------
def test_gradient_cost_table_and_check(capsys):
    assert dlvision_main(["gradcost", "--depths", "1", "3", "--width", "4", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2
    assert "gradient check passed" in text
    # 2 -> 4 -> 4 -> 4 -> 2: 12 + 20 + 20 + 10 parameters, two forward passes each
    assert rows[1].startswith("| 3 | 62 | 124 |")


def test_gradient_cost_agrees_and_naive_costs_more_with_depth():
    rows = gradient_cost.measure([1, 4], width=6, repeats=1)
    for row in rows:
        assert row["err_naive"] < 1e-7 and row["err_hand"] < 1e-12
    assert rows[1]["params"] > rows[0]["params"]
    assert rows[1]["forward_passes_naive"] == 2 * rows[1]["params"]


def test_gradient_cost_catches_a_wrong_backward(monkeypatch, capsys):
    real = gradient_cost.mlp_backward

    def forgets_the_batch_mean(x, hiddens, y_hat, y, weights):
        grad_w, grad_b = real(x, hiddens, y_hat, y, weights)
        return [g * x.shape[0] for g in grad_w], [g * x.shape[0] for g in grad_b]

    monkeypatch.setattr(gradient_cost, "mlp_backward", forgets_the_batch_mean)
    assert gradient_cost.main(["--depths", "1", "--width", "3", "--repeats", "1"]) == 1
    assert "gradient check FAILED" in capsys.readouterr().out


def test_gradient_cost_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        gradient_cost.main(["--depths", "0"])
    assert "must be a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gradient_cost.main(["--classes", "1"])
    assert "--classes must be at least 2" in capsys.readouterr().err


def test_stamp_paints_like_one_write_per_offset_with_overlaps():
    from dlvision.callbacks.decision_boundary import _disk, _stamp

    # the reference: paint each disk offset over all points in turn (later writes win)
    def stamp_loop(image, rows, cols, radius, colors):
        for dy, dx in _disk(radius).tolist():
            r, c = rows + dy, cols + dx
            inside = (r >= 0) & (r < image.shape[0]) & (c >= 0) & (c < image.shape[1])
            image[r[inside], c[inside]] = colors[inside]

    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(-3, 43, (60,), generator=gen)  # some near or past the edges, many overlapping
    cols = torch.randint(-3, 43, (60,), generator=gen)
    colors = torch.rand(60, 3, generator=gen) * 255
    for radius in (1, 3, 4):
        expected, got = torch.zeros(40, 40, 3), torch.zeros(40, 40, 3)
        stamp_loop(expected, rows, cols, radius, colors)
        _stamp(got, rows, cols, radius, colors)
        assert torch.equal(got, expected)
    _stamp(got, torch.tensor([100]), torch.tensor([100]), 2, colors[:1])  # all outside: nothing drawn
    assert torch.equal(got, expected)


def test_points_layer_drawn_once_gives_the_same_picture():
    from dlvision.callbacks.decision_boundary import points_layer

    probs = torch.rand(40, 40, 2, generator=torch.Generator().manual_seed(1)).softmax(dim=2)
    points = [(torch.tensor([[1.5, 1.5], [-0.3, 0.2]]), torch.tensor([1, 0])),
              (torch.tensor([[0.0, -1.0]]), torch.tensor([1]))]
    layer = points_layer(points, size=40)
    assert layer.shape == (320, 320, 4) and set(layer[..., 3].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(render_boundary(probs, layer=layer), render_boundary(probs, points))
    assert not torch.equal(render_boundary(probs, layer=layer), render_boundary(probs))
    with pytest.raises(ValueError, match="points or their layer"):
        render_boundary(probs, points, layer=layer)
    with pytest.raises(ValueError, match=r"\(160, 160, 4\)"):
        render_boundary(probs, layer=layer, scale=4)


def test_add_png_rejects_images_it_cannot_encode(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from dlvision.callbacks.decision_boundary import add_png

    writer = SummaryWriter(str(tmp_path))
    with pytest.raises(ValueError, match="uint8"):
        add_png(writer, "x", torch.zeros(8, 8, 3), 0)
    with pytest.raises(ValueError, match="uint8"):
        add_png(writer, "x", torch.zeros(3, 8, 8, dtype=torch.uint8), 0)
    writer.close()

    class OtherWriter:  # another writer (tensorboardX's, say): its own add_image encodes the picture
        def add_image(self, *args, **kwargs):
            self.call = (args, kwargs)

    other, image = OtherWriter(), torch.zeros(8, 8, 3, dtype=torch.uint8)
    add_png(other, "x", image, 5)
    assert other.call == (("x", image, 5), {"dataformats": "HWC"})
