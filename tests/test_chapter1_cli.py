"""Chapter 1 through the command line: the configs, the four implementations stacked on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlvision.cli import run_cli
from dlvision.tasks import ScratchClassifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = str(CONFIGS / "circles_mlp.yaml")
IMPLS = ("manual", "autograd", "nn", "optim")

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def quick(tmp_path: Path, *extra: str) -> list[str]:
    """Options that make a circles run tiny and keep its files in tmp_path."""
    return [
        "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.n_train", "40", "--data.n_test", "40", *extra,
    ]


def test_circles_config_has_the_course_defaults():
    cli = run_cli(["--config", BASE], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, ScratchClassifier) and model.impl == "optim"
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(10, 2), (2, 10)]
    assert data.batch_size == 10 and cli.trainer.max_epochs == 150
    assert model.steps_per_execution == 20  # a whole epoch of 20 steps per call of training_step
    assert model.configure_optimizers().param_groups[0]["lr"] == 0.03
    # N(0, 0.3) initialisation
    weights = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    assert 0.2 < weights.std() < 0.4


def test_the_four_implementation_configs_train_and_end_with_the_same_model(tmp_path):
    finals = {}
    for impl in IMPLS:
        cli = run_cli(["fit", "--config", BASE, "--config", str(CONFIGS / "circles" / "impl" / f"{impl}.yaml"),
                       *quick(tmp_path / impl, "--trainer.max_epochs", "3", "--model.init_args.optimizer.init_args.lr",
                              "0.5", "--trainer.precision", "64-true")])
        assert cli.model.impl == impl
        assert cli.model.steps_per_execution == 20 and not cli.model.automatic_optimization
        assert cli.trainer.global_step == 12  # 40 points / batch 10 x 3 epochs, also when written by hand
        metrics = cli.trainer.callback_metrics
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "train/lr"} <= set(metrics)
        assert metrics["train/lr"] == pytest.approx(0.5)
        assert (Path(cli.trainer.log_dir) / "decision_boundary.png").is_file()
        assert (Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt").is_file()
        finals[impl] = (float(metrics["val/loss"]), torch.cat([p.detach().flatten() for p in cli.model.net.parameters()]))
    loss, params = finals["manual"]
    assert params.dtype == torch.float64
    for impl in ("autograd", "nn", "optim"):
        assert finals[impl][0] == pytest.approx(loss, rel=1e-10)
        assert torch.allclose(finals[impl][1], params, rtol=1e-10, atol=1e-12)


def test_manual_on_mnist_and_resume_from_its_checkpoint(tmp_path, mnist_dir):
    base = ["--config", str(CONFIGS / "mnist_mlp.yaml"), "--config", str(CONFIGS / "circles" / "impl" / "manual.yaml"),
            "--data.data_dir", str(mnist_dir), "--data.val_size", "20", "--trainer.accelerator", "cpu",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.init_args.net.init_args.hidden", "[16]"]
    cli = run_cli(["fit", *base, "--trainer.max_epochs", "3"])
    assert cli.model.impl == "manual" and cli.trainer.global_step == 3
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    resumed = run_cli(["fit", *base, "--trainer.max_epochs", "4", "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 4  # the hand-written steps are counted in checkpoints too
    tested = run_cli(["test", *base, "--ckpt_path", str(ckpt)])
    assert "test/acc" in tested.trainer.callback_metrics


@pytest.mark.parametrize("name", ["batch_1", "batch_10", "batch_50", "batch_200"])
def test_batch_size_study_configs(name):
    cli = run_cli(["--config", BASE, "--config", str(CONFIGS / "circles" / "study" / f"{name}.yaml"),
                   "--config", str(CONFIGS / "circles" / "impl" / "manual.yaml")], run=False)
    assert cli.datamodule.batch_size == int(name.split("_")[1])
    assert cli.model.impl == "manual" and cli.model.lr == 0.03
    assert cli.trainer.logger.name == f"circles_study/{name}"


@pytest.mark.parametrize("lr", ["0.003", "0.03", "0.1", "0.3", "1.0"])
def test_learning_rate_study_configs(lr):
    cli = run_cli(["--config", BASE, "--config", str(CONFIGS / "circles" / "study" / f"lr_{lr}.yaml"),
                   "--config", str(CONFIGS / "circles" / "impl" / "nn.yaml")], run=False)
    assert cli.model.impl == "nn" and cli.model.lr == float(lr)
    assert cli.datamodule.batch_size == 10
    assert cli.trainer.logger.name == f"circles_study/lr_{lr}"


def test_the_mat_config_selects_the_course_file():
    cli = run_cli(["--config", BASE, "--config", str(CONFIGS / "circles" / "mat.yaml")], run=False)
    assert cli.datamodule.mat_path == Path("data/circles/circles.mat")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--model.init_args.impl", "by_hand"], "impl"),
        (["--config", str(CONFIGS / "circles" / "impl" / "manual.yaml"), "--model.init_args.net.init_args.activation",
          "relu"], "tanh MLP"),
        (["--config", str(CONFIGS / "circles" / "impl" / "autograd.yaml"), "--model.init_args.optimizer",
          "torch.optim.Adam"], "must be torch.optim.SGD, got Adam"),
    ],
)
def test_bad_options_on_the_command_line_fail_with_a_clear_message(args, match, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        run_cli(["--config", BASE, *args], run=False)
    message = str(info.value) + capsys.readouterr().err
    assert match in message
