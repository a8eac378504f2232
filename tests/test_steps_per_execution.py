"""steps_per_execution: several optimizer steps per training_step give the training of one step per call."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from lightning.fabric.utilities.exceptions import MisconfigurationException

from dlvision import Classifier
from dlvision.cli import run_cli
from dlvision.data import BatchGroup, CirclesDataModule, MNISTDataModule
from dlvision.models import MLP
from dlvision.tasks import ScratchClassifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def fit_circles(k: int, impl: str = "optim", scheduler=None, interval: str = "epoch", epochs: int = 3,
                logger=False, **trainer_options):
    """Fit the circles MLP with ``steps_per_execution=k``; return the final parameters, trainer and model."""
    seed_everything(0, verbose=False)
    net = MLP(2, [10], 2, activation="tanh")
    model = ScratchClassifier(net, impl=impl, optimizer=partial(torch.optim.SGD, lr=0.3), scheduler=scheduler,
                              scheduler_interval=interval, steps_per_execution=k)
    data = CirclesDataModule(data_dir="unused", n_train=130, n_test=50, batch_size=10, val_size=0)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **trainer_options)
    trainer.fit(model, data)
    return torch.cat([p.detach().flatten() for p in net.parameters()]), trainer, model


class Recorder(Logger):
    """A logger that keeps every (step, name, value) it is given."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, str, float]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.records += [(step, name, round(float(value), 6)) for name, value in metrics.items() if name != "epoch"]

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_the_logger_sees_the_same_steps_and_values():
    records = {}
    for k in (1, 4):
        recorder = Recorder()
        fit_circles(k, epochs=2, logger=recorder, log_every_n_steps=4)  # 13 batches per epoch
        records[k] = sorted(recorder.records)
    assert any(name == "train/loss_step" for _, name, _ in records[1])
    assert any(name == "val/acc" for _, name, _ in records[1])
    steps_1 = {(step, name) for step, name, _ in records[1]}
    # the epoch metrics at the same steps; train/loss_step where a call ends on a multiple of 4 steps
    assert {(s, n) for s, n in steps_1 if n != "train/loss_step"} == {(s, n) for s, n, _ in records[4] if n != "train/loss_step"}
    assert [r for r in records[4] if r[1] == "train/loss_step"] == [
        r for r in records[1] if r[1] == "train/loss_step" and (r[0] + 1) in (4, 8, 12)]
    assert [r for r in records[4] if r[1] != "train/loss_step"] == [r for r in records[1] if r[1] != "train/loss_step"]


def initial_parameters() -> torch.Tensor:
    seed_everything(0, verbose=False)
    return torch.cat([p.detach().flatten() for p in MLP(2, [10], 2, activation="tanh").parameters()])


@pytest.mark.parametrize("impl", ["optim", "manual"])
def test_grouped_steps_train_exactly_like_one_step_per_call(impl):
    ref, ref_trainer, _ = fit_circles(1, impl)
    assert not torch.equal(ref, initial_parameters())  # it did train
    for k in (4, 13, 50):  # 13 batches per epoch (130 points): groups that divide it, do not, and exceed it
        params, trainer, model = fit_circles(k, impl)
        assert not model.automatic_optimization
        torch.testing.assert_close(params, ref, rtol=0, atol=0)
        assert trainer.global_step == ref_trainer.global_step == 39
        for name in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert trainer.callback_metrics[name] == ref_trainer.callback_metrics[name]


@pytest.mark.parametrize(
    "scheduler, interval",
    [(partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.5), "step"),
     (partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5), "epoch"),
     (partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0), "epoch")],
    ids=["step", "epoch", "plateau"],
)
def test_schedulers_step_as_under_automatic_optimization(scheduler, interval):
    ref, ref_trainer, ref_model = fit_circles(1, scheduler=scheduler, interval=interval)
    params, trainer, model = fit_circles(6, scheduler=scheduler, interval=interval)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr < 0.3  # the schedule moved it
    assert lr == ref_trainer.optimizers[0].param_groups[0]["lr"]
    torch.testing.assert_close(params, ref, rtol=0, atol=0)


def test_max_steps_stops_inside_a_group():
    params, trainer, _ = fit_circles(8, epochs=10, max_steps=21)
    ref, ref_trainer, _ = fit_circles(1, epochs=10, max_steps=21)
    assert trainer.global_step == ref_trainer.global_step == 21
    torch.testing.assert_close(params, ref, rtol=0, atol=0)


def test_the_data_module_hands_over_groups_of_consecutive_batches(tmp_path):
    data = CirclesDataModule(data_dir="unused", n_train=25, n_test=10, batch_size=4, val_size=0)
    data.setup("fit")
    data.group_train_batches(3)
    data.trainer = type("FakeTrainer", (), {"training": True})()
    sizes = []
    for batch in data.train_dataloader():
        group = data.on_after_batch_transfer(batch, 0)
        assert isinstance(group, BatchGroup)
        sizes.append([len(y) for _, y in group])
        assert all(x.shape == (len(y), 2) for x, y in group)
    assert sizes == [[4, 4, 4], [4, 4, 4], [1]]  # 25 points: the batches of batch_size 4, three at a time
    with pytest.raises(ValueError, match="integer >= 1"):
        data.group_train_batches(0)


def test_images_are_grouped_after_augmentation(mnist_dir):
    seed_everything(0, verbose=False)
    data = MNISTDataModule(data_dir=mnist_dir, batch_size=8, val_size=0, augment=["pad_crop"],
                           augment_options={"pad_crop": {"padding": 2, "flip_p": 0.0}})
    data.setup("fit")
    data.group_train_batches(5)
    data.trainer = type("FakeTrainer", (), {"training": True})()
    group = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert [tuple(x.shape) for x, _ in group] == [(8, 1, 28, 28)] * 5
    assert group[0][0].dtype == torch.float32


def test_bad_values_and_foreign_loaders_fail_clearly():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="steps_per_execution must be an integer >= 1"):
            Classifier(MLP(2, [4], 2), steps_per_execution=bad)
    model = Classifier(MLP(2, [4], 2), steps_per_execution=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long)))
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="needs a dlvision data module"):
        trainer.fit(model, loader)
    # gradient clipping is Lightning's automatic optimization only: its message says so
    with pytest.raises(MisconfigurationException, match="manual optimization"):
        fit_circles(3, gradient_clip_val=1.0)


def test_the_cli_option_and_a_resumed_run(tmp_path):
    common = ["--config", str(CONFIGS / "circles_mlp.yaml"), "--trainer.enable_progress_bar", "false",
              "--data.n_train", "60", "--data.n_test", "20"]
    finals = []
    for k in ("1", "4"):
        run = ["fit", *common, "--trainer.logger.init_args.save_dir", str(tmp_path / k),
               "--model.init_args.steps_per_execution", k]
        cli = run_cli([*run, "--trainer.max_epochs", "2"])
        assert cli.model.steps_per_execution == int(k) and cli.trainer.global_step == 12
        last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
        resumed = run_cli([*run, "--trainer.max_epochs", "3", "--ckpt_path", str(last)])
        assert resumed.trainer.global_step == 18  # the steps inside a call are counted in checkpoints too
        finals.append(torch.cat([p.detach().flatten() for p in resumed.model.net.parameters()]))
    torch.testing.assert_close(finals[1], finals[0], rtol=0, atol=0)
