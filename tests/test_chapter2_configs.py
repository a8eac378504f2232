"""Chapter 2: every experiment config builds what it says, and the study runs end to end on small data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from dlvision.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "cnn.yaml"
STUDY = sorted((ROOT / "configs" / "cnn").rglob("*.yaml"))
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

OPTIMIZERS = {"sgd": "SGD", "sgd_momentum": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
              "adagrad": "Adagrad", "adadelta": "Adadelta"}
SCHEDULES = {"constant": None, "linear": "LinearLR", "step": "StepLR", "exponential": "ExponentialLR",
             "cosine": "CosineAnnealingLR", "polynomial": "PolynomialLR"}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def build(*configs: Path, extra: tuple[str, ...] = ()):
    args = [a for c in configs for a in ("--config", str(c))]
    cli = run_cli([*args, "--trainer.logger", "false", *extra], run=False)
    built = cli.model.configure_optimizers()
    optimizer = built["optimizer"] if isinstance(built, dict) else built
    scheduler = built["lr_scheduler"]["scheduler"] if isinstance(built, dict) else None
    return cli, optimizer, scheduler


def test_the_study_has_every_config_the_course_asks_for():
    names = {p.relative_to(ROOT / "configs" / "cnn").as_posix() for p in STUDY}
    expected = {"standardize.yaml", "augment.yaml", "dropout.yaml", "batchnorm.yaml", "schedule.yaml"}
    expected |= {f"norm/{n}.yaml" for n in ("standardize", "gcn", "zca", "pca", "l1", "l2", "minmax")}
    expected |= {f"aug/{n}.yaml" for n in ("crop_flip", "pad_crop", "erase", "rotate", "blur", "test_blur")}
    expected |= {f"optim/{n}.yaml" for n in OPTIMIZERS} | {f"sched/{n}.yaml" for n in SCHEDULES}
    expected |= {f"sweep/lr_{lr}.yaml" for lr in ("0.001", "0.01", "0.1")}
    expected |= {f"sweep/batch_{b}.yaml" for b in (16, 32, 64, 128, 256, 512, 1024)}
    assert expected <= names
    assert (ROOT / "configs" / "cnn_all.yaml").is_file()


@pytest.mark.parametrize("config", STUDY, ids=[p.relative_to(ROOT / "configs" / "cnn").as_posix() for p in STUDY])
def test_every_study_config_stacks_on_the_base_and_builds(config, in_tmp):
    cli, optimizer, scheduler = build(BASE, config)
    name, folder = config.stem, config.parent.name
    data, net = cli.datamodule, cli.model.net
    if folder == "optim":
        assert type(optimizer).__name__ == OPTIMIZERS[name]
        assert optimizer.defaults["lr"] == 0.01
        assert optimizer.defaults.get("momentum", 0.0) == (0.9 if name == "sgd_momentum" else 0.0)
    elif folder == "sched":
        assert (type(scheduler).__name__ if scheduler else None) == SCHEDULES[name]
    elif folder == "norm":
        assert data.normalize == name
    elif folder == "aug":
        assert data.augment[0] == ("pad_crop" if name == "pad_crop" else "crop_flip") and data.augment[-1] == name
    elif folder == "sweep":
        assert cli.trainer.max_epochs == 15
        kind, value = name.split("_")
        if kind == "lr":
            assert optimizer.defaults["lr"] == float(value)
        else:
            assert data.batch_size == int(value)
    else:
        expectations = {
            "standardize": data.normalize == "standardize",
            "augment": data.augment == ["crop_flip"] and data.crop_size == 28,
            "dropout": isinstance(net.dropout, torch.nn.Dropout) and net.dropout.p == 0.5,
            "batchnorm": isinstance(net.features[0][1], torch.nn.BatchNorm2d),
            "schedule": type(scheduler).__name__ == "ExponentialLR" and scheduler.gamma == 0.95,
        }
        assert expectations[name]
    # the base's other settings are untouched by a single switch
    if folder != "sweep" and name != "augment" and folder != "aug":
        assert data.batch_size == 32 and cli.trainer.max_epochs == 100


def test_switches_combine_later_config_wins(in_tmp):
    cli, optimizer, scheduler = build(BASE, ROOT / "configs/cnn/standardize.yaml", ROOT / "configs/cnn/augment.yaml",
                                      ROOT / "configs/cnn/dropout.yaml", ROOT / "configs/cnn/batchnorm.yaml",
                                      ROOT / "configs/cnn/optim/adagrad.yaml", ROOT / "configs/cnn/schedule.yaml")
    assert cli.datamodule.normalize == "standardize" and cli.datamodule.augment == ["crop_flip"]
    assert cli.model.net.dropout.p == 0.5 and isinstance(cli.model.net.features[1][1], torch.nn.BatchNorm2d)
    assert type(optimizer).__name__ == "Adagrad" and type(scheduler).__name__ == "ExponentialLR"


def test_cnn_all_is_the_course_architecture_with_every_improvement(in_tmp):
    cli, optimizer, scheduler = build(ROOT / "configs/cnn_all.yaml")
    net, data = cli.model.net, cli.datamodule
    assert type(net).__name__ == "CourseCNN" and sum(p.numel() for p in net.parameters()) == 1_191_170 + 2 * (32 + 64 + 64)
    assert isinstance(net.dropout, torch.nn.Identity) and isinstance(net.features[2][1], torch.nn.BatchNorm2d)  # BN in, dropout measured out
    assert cli.model.criterion.label_smoothing == 0.1 and cli.model.tta_flip
    assert data.normalize == "standardize" and "pad_crop" in data.augment and data.batch_size == 128
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 5e-4
    assert type(scheduler).__name__ == "OneCycleLR" and cli.model.scheduler_interval == "step"
    # the one-cycle length is exactly max_epochs x batches per epoch of the training images
    steps_per_epoch = math.ceil((50_000 - data.val_size) / data.batch_size)
    assert scheduler.total_steps == cli.trainer.max_epochs * steps_per_epoch
    assert cli.trainer.max_epochs <= 40


def test_learning_rate_of_every_epoch_reaches_tensorboard(in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = make_image_folder(in_tmp / "data" / "cifar10-jpg", n_train_per_class=3, n_test_per_class=1).parent
    cli = run_cli(["fit", "--config", str(BASE), "--config", str(ROOT / "configs/cnn/schedule.yaml"),
                   "--data.data_dir", str(root), "--data.val_size", "10", "--trainer.max_epochs", "3",
                   "--model.init_args.scheduler.init_args.gamma", "0.5", *QUIET])
    events = EventAccumulator(cli.trainer.log_dir)
    events.Reload()
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == pytest.approx([0.01, 0.005, 0.0025])


def test_whole_study_pipeline_fits_and_tests_from_a_checkpoint(in_tmp):
    """ZCA + every augmentation + BN + dropout 1.0 + Adam + cosine: trains, checkpoints the fitted
    whitening with the model, and `test --ckpt_path` restores it (same test metrics as in memory)."""
    root = make_image_folder(in_tmp / "data" / "cifar10-jpg", n_train_per_class=3, n_test_per_class=2).parent
    args = ["--config", str(BASE), "--config", str(ROOT / "configs/cnn/norm/zca.yaml"),
            "--config", str(ROOT / "configs/cnn/batchnorm.yaml"), "--config", str(ROOT / "configs/cnn/optim/adam.yaml"),
            "--config", str(ROOT / "configs/cnn/sched/cosine.yaml"),
            "--data.data_dir", str(root), "--data.val_size", "10", "--data.batch_size", "8",
            "--data.augment", "[crop_flip, erase, rotate, blur, test_blur, channels_last]",
            "--data.augment_options", "{erase: {p: 1.0}, rotate: {degrees: 20}}",
            "--model.init_args.net.init_args.dropout", "1.0", *QUIET]
    cli = run_cli(["fit", *args, "--trainer.max_epochs", "2", "--trainer.precision", "bf16-mixed"])
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert list(root.glob(".dlvision-whitening-*.pt"))  # cached next to the data
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    saved = torch.load(ckpt, weights_only=False)
    state = next(v for k, v in saved.items() if "CIFAR10DataModule" in k)
    assert state["transform"]["1.matrix"].shape == (3072, 3072)
    in_memory = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    tested = run_cli(["test", *args, "--ckpt_path", ckpt])
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(in_memory["test/acc"])
    assert tested.trainer.callback_metrics["test/loss"].item() == pytest.approx(in_memory["test/loss"], rel=1e-3)
