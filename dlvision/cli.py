"""The ``dlvision`` command: a LightningCLI (fit, validate, test, predict) plus project tools."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from dlvision._startup import collector_paused, freeze_imports

with collector_paused():  # the CLI's own heavy imports (jsonargparse, LightningCLI); see dlvision/_startup.py
    import torch
    from jsonargparse.typing import PositiveInt
    from lightning import LightningDataModule, LightningModule, Trainer
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
    from lightning.pytorch.cli import LightningCLI

    from dlvision.callbacks.checkpoint import BestAndLastCheckpoint
    from dlvision.data.base import DataFormatError, DatasetNotFoundError

DEFAULT_SEED = 42

# Extra sub-commands: name -> "module:function", the function taking argv (list[str]) and returning
# an exit code. Imported only when asked for, so optional extras (scikit-learn, timm) stay optional.
TOOLS: dict[str, str] = {
    "svm": "dlvision.tools.svm:main",
    "gradcost": "dlvision.tools.gradient_cost:main",
    "summary": "dlvision.tools.summary:main",
}


class DLVisionCLI(LightningCLI):
    """LightningCLI with dlvision's defaults: seed 42, TensorBoard under lightning_logs/, and a
    ModelCheckpoint on ``val/acc`` (best and ``last.ckpt``) configurable as ``--checkpoint.*``."""

    def __init__(self, *args, **kwargs) -> None:
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        first = argv[0] if isinstance(argv, (list, tuple)) and argv else None
        self._requested_subcommand = first if first in LightningCLI.subcommands() else None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """Lightning's subcommands; when the command line starts with one of them, only that one:
        each subcommand's parser (the Trainer's, the model's and the data's arguments) costs about
        0.1 s to build, and ``dlvision --help`` (no subcommand first) still lists them all."""
        every = LightningCLI.subcommands()
        requested = getattr(self, "_requested_subcommand", None)
        return {requested: every[requested]} if requested else every

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=Optional[PositiveInt],
            default=None,
            help="CPU threads for torch's operators (torch.set_num_threads); null keeps torch's default. "
            "1 is fastest for tiny models and when several runs share the cores.",
        )
        parser.add_argument(
            "--progress_refresh_rate",
            type=PositiveInt,
            default=10,
            help="refresh the progress bar every N batches (Lightning's default, 1, costs about half a "
            "millisecond per step; --trainer.enable_progress_bar false turns the bar off)",
        )
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch={epoch}-val_acc={val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("torch_threads")
        if threads:
            torch.set_num_threads(threads)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, with a progress bar refreshed every ``progress_refresh_rate`` batches unless
        the config disables the bar or brings its own."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config["trainer"]
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            trainer["callbacks"] = [*callbacks, TQDMProgressBar(refresh_rate=config.get("progress_refresh_rate") or 1)]
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # --trainer.enable_checkpointing false turns off the --checkpoint.* callback too (Lightning
        # would otherwise refuse the combination with a MisconfigurationException)
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, BestAndLastCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)


def run_cli(args: list[str] | None = None, run: bool = True) -> DLVisionCLI:
    """Build (and by default run) the Lightning CLI on ``args`` (``sys.argv[1:]`` when None)."""
    return DLVisionCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=DEFAULT_SEED,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "lightning_logs", "name": "default"},
            },
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlvision`` console script."""
    freeze_imports()  # this process's imported libraries: out of the garbage collector's way
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in TOOLS:
        module, function = TOOLS[args[0]].split(":")
        return getattr(importlib.import_module(module), function)(args[1:])
    try:
        run_cli(argv)  # None: LightningCLI reads sys.argv itself
    except (DatasetNotFoundError, DataFormatError) as err:
        # the message already says what to do; a traceback through Lightning adds nothing
        print(f"dlvision: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
