"""The classification LightningModule: wraps any pure ``nn.Module`` network that outputs logits."""

from __future__ import annotations

from typing import Literal

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric

from dlvision.data.base import BatchGroup


def default_optimizer(params) -> torch.optim.Optimizer:
    """The course's optimizer: plain SGD (no momentum), lr 0.01."""
    return torch.optim.SGD(params, lr=0.01)


def add_to_state(metric: Metric, name: str, value) -> None:
    """``state += value``, in place when allowed (a state reset under inference mode is an inference
    tensor, which only a new tensor can replace outside inference mode)."""
    state = getattr(metric, name)
    if state.is_inference() and not torch.is_inference_mode_enabled():
        setattr(metric, name, state + value)
    else:
        state.add_(value)


class TopKAccuracy(Metric):
    """Epoch top-1 accuracy (``<prefix>acc``) and, above 5 classes, top-5 (``<prefix>acc_top5``).

    The same numbers as torchmetrics' ``MulticlassAccuracy(average="micro", top_k=k)`` (tested
    against it), from one ``topk`` and a few sums per step: about a tenth of the cost of a
    MetricCollection of two MulticlassAccuracy, which matters when a whole training step of the
    small networks here takes well under a millisecond. No host-device synchronisation per step.
    """

    full_state_update = False

    def __init__(self, num_classes: int, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix
        self.top_k = (1, 5) if num_classes > 5 else (1,)
        self.add_state("hits", torch.zeros(len(self.top_k)), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        best = logits.detach().topk(self.top_k[-1], dim=1).indices  # N x kmax, best first
        found = (best == target[:, None]).float().cumsum(dim=1)  # 1 from the rank of the label on
        # out of place: the states may be inference tensors after an evaluation run
        # (plain column picks, not a list index: that would copy an index tensor to the GPU each step)
        self.hits = self.hits + torch.stack([found[:, k - 1] for k in self.top_k], dim=1).sum(dim=0)
        self.count = self.count + target.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        rates = self.hits / self.count
        return {f"{self.prefix}acc" + ("" if k == 1 else f"_top{k}"): rate for k, rate in zip(self.top_k, rates)}


class BatchMean(Metric):
    """Mean of per-batch values weighted by the batch size (the epoch's mean loss per sample).

    Not torchmetrics' MeanMetric: its NaN checks synchronise a GPU every step, and with
    ``nan_strategy="disable"`` it ignores the weights (torchmetrics 1.9).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        add_to_state(self, "total", value.detach().float() * weight)
        add_to_state(self, "count", weight)

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class Classifier(LightningModule):
    """Cross-entropy training of ``net`` with accuracy metrics, for any data module of dlvision.

    Logs ``train/loss`` (epoch mean; ``train/loss_step`` per step), ``train/acc``, ``val/loss``,
    ``val/acc``, ``test/loss``, ``test/acc`` (plus ``*/acc_top5`` above 5 classes) and ``train/lr``.
    ``optimizer`` and ``scheduler`` are injected callables (any ``torch.optim`` class and any
    ``torch.optim.lr_scheduler`` class from the config); ReduceLROnPlateau watches
    ``scheduler_monitor``. ``predict`` returns class probabilities. ``channels_last`` stores
    convolution weights and image batches as NHWC; ``compile`` runs the network through
    ``torch.compile`` (see the Performance section of the README for when they pay).
    ``label_smoothing`` is the cross-entropy's (training and evaluation alike); ``tta_flip``
    evaluates (validation, test, predict) on the mean of the logits of each image and its mirror
    image, a test-time augmentation for data whose classes are mirror-symmetric (CIFAR-10, not digits).
    ``steps_per_execution`` > 1 has the data module hand over that many batches at once and takes
    one optimizer step per batch inside one ``training_step`` (like Keras' option of that name): the
    same batches and updates, with Lightning's per-call cost shared by several steps, which pays for
    tiny networks. The logger's step axis still counts optimizer steps; the progress bar,
    ``val_check_interval`` and ``limit_train_batches`` count calls, and ``train/loss_step`` is written
    when a call ends on a multiple of ``log_every_n_steps`` (make it a multiple of the group size).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        num_classes: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        label_smoothing: float = 0.0,
        tta_flip: bool = False,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hyperparameters are the config (the net as class_path/init_args), so
        # load_from_checkpoint rebuilds everything; built by hand, the objects are not saved.
        self.save_hyperparameters(ignore=None if self._from_cli() else ["net", "optimizer", "scheduler"])
        self.net = net
        num_classes = num_classes or getattr(net, "num_classes", None)
        if not num_classes:
            raise ValueError(
                f"{type(net).__name__} has no num_classes attribute: pass model.init_args.num_classes"
            )
        self.num_classes = int(num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()  # in place: parameter names, and so checkpoints, stay as they are
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.tta_flip = tta_flip
        if isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, int) or steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be an integer >= 1, got {steps_per_execution!r}")
        self.steps_per_execution = steps_per_execution
        # several optimizer steps per call of training_step are Lightning's manual optimization
        self.automatic_optimization = steps_per_execution == 1
        self.train_metrics = TopKAccuracy(self.num_classes, "train/")
        self.val_metrics = TopKAccuracy(self.num_classes, "val/")
        self.test_metrics = TopKAccuracy(self.num_classes, "test/")
        self.train_loss, self.val_loss, self.test_loss = BatchMean(), BatchMean(), BatchMean()

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets _current_fx_name around every hook call, some 25 times per training step;
        # nn.Module.__setattr__ checks parameters, buffers and submodules each time. A plain
        # attribute needs none of that (together ~0.3 ms per step, a third of a tiny step).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @staticmethod
    def _from_cli() -> bool:
        """True while LightningCLI instantiates us: it then saves the net as its config, not as an object."""
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        return _given_hyperparameters.get() is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "group_train_batches"):
            datamodule.group_train_batches(self.steps_per_execution)
        elif self.steps_per_execution > 1:
            raise ValueError(
                f"steps_per_execution={self.steps_per_execution} needs a dlvision data module, whose training "
                f"loader hands over that many batches at once; got {type(datamodule).__name__}: "
                f"pass a dlvision data module to fit, or set steps_per_execution to 1"
            )

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes and data_classes != self.num_classes:
            raise ValueError(
                f"the network outputs {self.num_classes} classes but {type(datamodule).__name__} has "
                f"{data_classes}: set the network's num_classes to {data_classes}"
            )
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(self.num_params)}, step=0)

    def on_train_epoch_start(self) -> None:
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if optimizer is not None:
            self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation: the network's, or with ``tta_flip`` the mean over ``x`` and ``x``
        mirrored left to right (one forward pass on the doubled batch)."""
        if not self.tta_flip:
            return self(x)
        if x.dim() != 4:
            raise ValueError(f"tta_flip needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        return self(torch.cat([x, x.flip(-1)])).unflatten(0, (2, len(x))).mean(dim=0)

    # Metrics are updated every step and logged once per epoch: self.log() costs about a
    # millisecond per call in Lightning (it moves and copies its bookkeeping every time), more
    # than a whole training step of the small networks here.
    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x) if stage == "train" else self.evaluate(x)
        loss = self.criterion(logits, y)
        self.record_step(stage, logits, y, loss)
        return loss

    def record_step(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """Account one batch of ``stage`` (train, val or test): accuracy and mean loss of the epoch,
        and, in training, ``train/loss_step`` on the steps the logger writes. Subclasses that write
        their own training step call it too."""
        getattr(self, f"{stage}_metrics").update(logits, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        if stage == "train" and (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)

    def _log_epoch(self, stage: str) -> None:
        metrics, mean_loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        values = {f"{stage}/loss": mean_loss.compute(), **metrics.compute()}  # synced across processes
        self.log_dict(values, prog_bar=stage == "val")
        metrics.reset()
        mean_loss.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        logits, labels, losses = [], [], []
        for x, y in batch if isinstance(batch, BatchGroup) else [batch]:
            if 0 <= self.trainer.max_steps <= self.global_step:
                break
            step_logits, loss = self.manual_training_step(x, y)
            logits.append(step_logits)
            labels.append(y)
            losses.append(loss * len(y))
        # Lightning counts calls for the logger's step axis and for log_every_n_steps; have it count
        # optimizer steps, as with one step per call (it adds this call's 1 after training_step)
        epoch_loop = self.trainer.fit_loop.epoch_loop
        if hasattr(epoch_loop, "_batches_that_stepped"):
            epoch_loop._batches_that_stepped = self.global_step - 1
        if not losses:
            return None
        # the epoch's metrics are accounted once per call (the same sums as once per step)
        count = sum(len(y) for y in labels)
        self.train_metrics.update(torch.cat(logits), torch.cat(labels))
        self.train_loss.update(torch.stack(losses).sum() / count, count)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)  # written every log_every_n_steps calls
        return loss

    def manual_training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on one batch under manual optimization (``steps_per_execution`` > 1),
        as Lightning's automatic optimization does it; returns the (detached) logits and loss."""
        optimizer = self.optimizers()
        logits = self(x)
        loss = self.criterion(logits, y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self._step_schedulers("step")
        return logits.detach(), loss.detach()

    def _step_schedulers(self, interval: str) -> None:
        """Step the schedulers of ``interval`` as Lightning's automatic optimization would (manual mode)."""
        count = self.global_step if interval == "step" else self.current_epoch + 1
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            metric = None
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(self.scheduler_monitor)
                if metric is None:
                    raise ValueError(
                        f"ReduceLROnPlateau watches {self.scheduler_monitor!r}, which was not logged; logged: "
                        f"{sorted(self.trainer.callback_metrics)}: set model.init_args.scheduler_monitor"
                    )
            self.lr_scheduler_step(config.scheduler, metric)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        if not self.automatic_optimization:
            self._step_schedulers("epoch")  # after this epoch's validation, like Lightning's

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.evaluate(x).softmax(dim=-1)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and self.automatic_optimization:
            config["monitor"] = self.scheduler_monitor  # under manual optimization _step_schedulers reads it
        return {"optimizer": optimizer, "lr_scheduler": config}
