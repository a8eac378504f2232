"""Checkpointing: the best model on a monitored metric, and ``last.ckpt`` after every validation
(or every ``every_n_epochs`` epochs) and at the end of training."""

from __future__ import annotations

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is refreshed after every validation.

    Since Lightning 2.6 ``save_last=True`` only rewrites ``last.ckpt`` when a top-k checkpoint was
    saved in the same step, so a run whose metric stops improving could only resume from the epoch
    of its best score. Resuming from ``last.ckpt`` must continue from the latest epoch.

    With ``every_n_epochs`` > 1 (fewer saves: they cost more than the epochs of a tiny model),
    ``last.ckpt`` is still written when training ends, so that it always holds the final model.
    """

    _last_saved_step: int | None = None

    @property
    def state_key(self) -> str:
        # Lightning formats this key (a repr of the settings) around every hook call, several
        # times per training step; the settings it depends on are fixed at construction.
        key = self.__dict__.get("_cached_state_key")
        if key is None:
            key = self._cached_state_key = super().state_key
        return key

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        final = self.save_last and not trainer.fast_dev_run and trainer.state.fn == "fit"
        if final and self._last_saved_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _refresh_last(self, trainer: Trainer) -> None:
        # skipped when the parent has just saved at this step (then last.ckpt is already fresh),
        # and between the epochs that every_n_epochs selects
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if self.save_last and due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
