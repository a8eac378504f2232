"""The dlvision command end to end, on small generated data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, make_mnist
from dlvision import Classifier
from dlvision.callbacks.checkpoint import BestAndLastCheckpoint
from dlvision.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def data_args_for(config: Path, root: Path) -> list[str]:
    """Generate the small data set the config's data module reads, and point the config at it."""
    data = yaml.safe_load(config.read_text())["data"]["class_path"]
    if data.endswith("CirclesDataModule"):
        return ["--data.n_train", "40", "--data.n_test", "20"]
    if data.endswith("MNISTDataModule"):
        variant = yaml.safe_load(config.read_text())["data"].get("init_args", {}).get("variant", "mnist")
        make_mnist(root, name="FashionMNIST" if variant == "fashion_mnist" else "MNIST")
        return ["--data.data_dir", str(root), "--data.val_size", "20"]
    if data.endswith("CIFAR10DataModule"):
        make_image_folder(root / "cifar10-jpg", n_train_per_class=4, n_test_per_class=2)
        return ["--data.data_dir", str(root), "--data.val_size", "10"]
    raise AssertionError(f"no test data generator for {data} (config {config.name})")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_top_level_config_exists_as_promised():
    names = {c.name for c in CONFIGS}
    assert {"circles_mlp.yaml", "mnist_mlp.yaml", "cnn.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_end_to_end(config, in_tmp):
    cli = run_cli(["fit", "--config", str(config), *data_args_for(config, in_tmp / "data"), *QUICK])
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert torch.isfinite(metrics[name]), name
    log_dir = Path(cli.trainer.log_dir).resolve()
    assert log_dir.is_relative_to(in_tmp / "lightning_logs")
    assert (log_dir / "config.yaml").is_file()  # the resolved config beside the logs
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()


def circles(*extra: str) -> list[str]:
    """A small circles run; checkpoints every epoch (the CLI's default; the config saves every 10)."""
    return ["fit", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--data.n_train", "60", "--data.n_test", "30",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.every_n_epochs", "1", *extra]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(in_tmp):
    runs = [run_cli(circles("--trainer.max_epochs", "3", "--seed_everything", str(seed))).trainer.callback_metrics
            for seed in (7, 7, 8)]
    for name in ("train/loss", "val/loss", "val/acc"):
        assert runs[0][name].item() == runs[1][name].item(), name
    assert runs[0]["train/loss"].item() != runs[2]["train/loss"].item()


def test_tensorboard_receives_the_metrics_learning_rate_and_parameter_count(in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = run_cli(circles("--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"))
    events = EventAccumulator(cli.trainer.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_step", "train/acc", "val/loss", "val/acc", "train/lr", "model/params"} <= tags
    assert events.Scalars("model/params")[0].value == 2 * 10 + 10 + 10 * 2 + 2
    assert len(events.Scalars("train/loss")) == 2  # one per epoch


def test_checkpoint_reloads_with_identical_predictions(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "2"))
    model = cli.model.eval()
    x = torch.randn(16, 2)
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert checkpoint.name == "last.ckpt"
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.name.startswith("epoch=") and "val_acc=" in best.name
    reloaded = Classifier.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


def test_optimizer_and_scheduler_chosen_on_the_command_line_take_effect(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "3", "--model.optimizer", "torch.optim.Adam",
                          "--model.optimizer.lr", "0.008", "--model.scheduler", "torch.optim.lr_scheduler.StepLR",
                          "--model.scheduler.step_size", "1", "--model.scheduler.gamma", "0.5"))
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.008 * 0.5**3)
    assert cli.trainer.callback_metrics["train/lr"].item() == pytest.approx(0.008 * 0.5**2)  # lr of the last epoch


def test_plateau_scheduler_from_the_command_line(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "2", "--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau",
                          "--model.scheduler.patience", "0", "--model.scheduler_monitor", "val/acc"))
    config = cli.trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert cli.model.scheduler_monitor == "val/acc"
    assert config.scheduler.last_epoch == 2  # stepped after each epoch, on val/acc (mode min: the lowest)
    assert config.scheduler.best <= float(cli.trainer.callback_metrics["val/acc"])


def test_resume_from_last_checkpoint_continues_at_the_right_epoch(in_tmp):
    first = run_cli(circles("--trainer.max_epochs", "2"))
    last = first.trainer.checkpoint_callback.last_model_path
    steps = first.trainer.global_step
    assert steps == 2 * 6
    resumed = run_cli(circles("--trainer.max_epochs", "4", "--ckpt_path", last))
    assert resumed.trainer.current_epoch == 4
    assert resumed.trainer.global_step == 4 * 6  # continued, not restarted


def test_stacked_configs_later_wins_and_print_config(in_tmp, capsys):
    override = in_tmp / "override.yaml"
    override.write_text("model:\n  init_args:\n    optimizer:\n      init_args: {lr: 0.123}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(circles("--config", str(override), "--print_config"))
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.123
    assert printed["model"]["init_args"]["net"]["class_path"] == "dlvision.models.MLP"
    assert printed["seed_everything"] == 42


def test_unknown_option_is_rejected_with_its_name(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(circles("--data.init_args.colour", "blue"))
    assert exit_info.value.code != 0
    assert "colour" in capsys.readouterr().err


def test_bf16_mixed_precision_on_cpu(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed"))
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    seen = []
    hook = cli.model.net[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cli.trainer.validate(cli.model, cli.datamodule, verbose=False)
    hook.remove()
    assert torch.bfloat16 in seen  # the linear layers really ran in bfloat16


def test_test_and_predict_subcommands(in_tmp):
    fit = run_cli(circles("--trainer.max_epochs", "2"))
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    test = run_cli(["test", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--data.n_train", "60",
                    "--data.n_test", "30", "--ckpt_path", ckpt, "--trainer.enable_progress_bar", "false"])
    assert 0.0 <= test.trainer.callback_metrics["test/acc"].item() <= 1.0
    pred = run_cli(["predict", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--data.n_train", "60",
                    "--data.n_test", "30", "--ckpt_path", ckpt, "--trainer.enable_progress_bar", "false"])
    probs = torch.cat(pred.trainer.predict_loop.predictions)
    assert probs.shape == (30, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(30))


def test_ddp_with_two_cpu_processes_through_the_console_script(in_tmp):
    script = Path(sys.executable).with_name("dlvision")
    command = [str(script) if script.exists() else "dlvision", *circles("--trainer.max_epochs", "2"),
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = next(in_tmp.glob("lightning_logs/circles_mlp/version_0/checkpoints/last.ckpt"))
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    # each of the 2 processes sees half of the 60 training points: 3 steps of 10 per epoch, not 6
    assert state["global_step"] == 2 * 3


def test_last_checkpoint_follows_every_epoch_even_when_the_metric_stops_improving(in_tmp):
    # lr 0: val/acc never improves after the first epoch, yet last.ckpt must hold the latest epoch
    cli = run_cli(circles("--trainer.max_epochs", "3", "--model.optimizer.lr", "0.0"))
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 3 * 6
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name.startswith("epoch=0-")


def test_checkpoints_every_n_epochs_apply_to_last_too(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "5", "--checkpoint.every_n_epochs", "2", "--model.optimizer.lr", "0.0"))
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)
    # saved after epochs 2 and 4 (indices 1 and 3), then once more when training ends: the final model
    assert state["global_step"] == 5 * 6 and state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 5


def test_final_last_checkpoint_resumes_and_is_written_once(in_tmp, monkeypatch):
    writes = []
    save = BestAndLastCheckpoint._save_checkpoint
    monkeypatch.setattr(BestAndLastCheckpoint, "_save_checkpoint",
                        lambda self, trainer, path: (writes.append((Path(path).name, trainer.global_step)),
                                                     save(self, trainer, path)))
    first = run_cli(circles("--trainer.max_epochs", "3", "--checkpoint.every_n_epochs", "2"))
    last_writes = [step for name, step in writes if name == "last.ckpt"]
    assert last_writes == [2 * 6, 3 * 6]  # after epoch 2, then at the end of training
    writes.clear()
    run_cli(circles("--trainer.max_epochs", "4"))  # every epoch, and 4 is the last: no extra write
    assert [step for name, step in writes if name == "last.ckpt"] == [6, 12, 18, 24]
    resumed = run_cli(circles("--trainer.max_epochs", "5", "--ckpt_path", first.trainer.checkpoint_callback.last_model_path))
    assert resumed.trainer.current_epoch == 5 and resumed.trainer.global_step == 5 * 6  # continued after epoch 3


def test_circles_config_checkpoints_every_10_epochs_and_at_the_end(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "12", "--checkpoint.every_n_epochs", "10"))
    assert cli.trainer.checkpoint_callback.every_n_epochs == 10
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name.startswith("epoch=9-")
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert state["global_step"] == 12 * 6  # the final model, not epoch 10's
    config = yaml.safe_load((ROOT / "configs/circles_mlp.yaml").read_text())
    assert config["checkpoint"]["every_n_epochs"] == 10


def test_checkpointing_can_be_switched_off_from_the_trainer(in_tmp):
    cli = run_cli(circles("--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false"))
    assert cli.trainer.checkpoint_callback is None
    assert not any(isinstance(c, BestAndLastCheckpoint) for c in cli.trainer.callbacks)
    assert not list(Path(cli.trainer.log_dir).glob("**/*.ckpt"))


def test_missing_data_through_the_command_ends_with_the_message_not_a_traceback(in_tmp, capsys):
    from dlvision.cli import main

    code = main(["fit", "--config", str(ROOT / "configs/cnn.yaml"), "--data.data_dir", str(in_tmp / "nothing")])
    err = capsys.readouterr().err
    assert code == 2
    assert "dlvision: error: CIFAR-10 not found under" in err and "--data.download true" in err
    assert "Traceback" not in err


def test_only_the_requested_subcommand_parser_is_built_and_help_lists_them_all(in_tmp, capsys):
    cli = run_cli(circles("--trainer.max_epochs", "1"))
    assert set(cli._subcommand_parsers) == {"fit"}  # validate/test/predict parsers are not built for a fit
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--help"])
    assert exit_info.value.code == 0
    assert "{fit,validate,test,predict}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--help"])
    assert exit_info.value.code == 0 and "--trainer.max_epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fitt", "--config", str(ROOT / "configs/circles_mlp.yaml")])
    assert exit_info.value.code != 0 and "fitt" in capsys.readouterr().err
