"""Lightning's cost on tiny steps: the circles MLP (batch 10) through dlvision against plain loops.

    python benchmarks/mlp_circles.py

(a) ``dlvision fit --config configs/circles_mlp.yaml`` (2,000 generated points so an epoch is long
    enough to time; 20 steps per call of training_step, as the config says); (a1) the same with one
    step per call; (b) a plain PyTorch loop over a DataLoader of a TensorDataset (shuffled, batch
    10); (c) the model alone on a fixed batch; (d) a bare Lightning Trainer around the same network
    (a minimal LightningModule logging its loss each step, a DataLoader of a TensorDataset).
Then the whole default run (150 epochs, start-up included) as a user types it, timed end to end.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

import _harness as h


class BareModule(LightningModule):
    """The smallest reasonable LightningModule: loss, log, SGD."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.03)


def main() -> None:
    p = h.parser(__doc__)
    p.set_defaults(steps=150, warmup=20, reps=3, workers=[0])
    p.add_argument("--full-runs", type=int, default=2, help="timed runs of the whole default config")
    args = p.parse_args()
    device = torch.device("cpu")  # a batch of 10 points: the GPU does not pay here
    torch.set_num_threads(1)  # what configs/circles_mlp.yaml selects (torch_threads: 1), for every path
    n_train = 2000
    config = ["--config", "configs/circles_mlp.yaml", "--data.n_train", str(n_train)]
    cli, net = h.build_fit_path(config, args.steps, args.warmup, args.reps, device)
    x, y = cli.datamodule.train_set.inputs, cli.datamodule.train_set.targets
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    make_optimizer = cli.model.optimizer_factory
    others = {"b": h.plain_loop_step(copy.deepcopy(net), loader, device, make_optimizer),
              "c": h.model_alone_step(copy.deepcopy(net), x[:10], y[:10], device, make_optimizer)}
    a_times, times = h.run_fit_path(cli, others, args.steps, args.warmup, device)
    b_times, c_times = times["b"], times["c"]
    # the same fit path with one step per call of training_step (Lightning's automatic
    # optimization), with its own interleaved repetitions of (b)
    cli_1, _ = h.build_fit_path([*config, "--model.init_args.steps_per_execution", "1"], args.steps, args.warmup,
                                args.reps, device)
    b_again = h.plain_loop_step(copy.deepcopy(net), loader, device, make_optimizer)
    a1_times, times_1 = h.run_fit_path(cli_1, {"b": b_again}, args.steps, args.warmup, device)
    timer = h.StepTimer(args.warmup)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=args.reps, limit_train_batches=args.warmup + args.steps,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[timer])
    trainer.fit(BareModule(copy.deepcopy(net)), DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True))
    d_times = timer.per_epoch

    def wall(command: list[str], folder: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *command], cwd=folder, check=True, capture_output=True)
        return time.perf_counter() - start

    # the whole run, and beside each one the imports alone (torch; the CLI with Lightning): the
    # host's speed drifts, and the imports are a floor that no change to the run itself can lower
    walls, torch_imports, cli_imports = [], [], []
    for _ in range(args.full_runs):
        with tempfile.TemporaryDirectory() as folder:
            walls.append(wall(["-m", "dlvision.cli", "fit", "--config", str(h.ROOT / "configs/circles_mlp.yaml")], folder))
            torch_imports.append(wall(["-c", "import torch"], folder))
            cli_imports.append(wall(["-c", "import dlvision.cli"], folder))
    bare_ratio = statistics.median(b_times) / statistics.median(d_times)
    per_call = cli.model.steps_per_execution
    a1_ratio = statistics.median(times_1["b"]) / statistics.median(a1_times)
    notes = [f"(a) takes {per_call} steps per call of training_step (configs/circles_mlp.yaml, steps_per_execution); "
             f"(a1) is the same with one step per call: (a1)/(b) = {a1_ratio:.2f} against its own interleaved (b) "
             f"({statistics.median(times_1['b']) * 1000:.2f} ms/step)",
             f"(d)/(b) = {bare_ratio:.2f}: what a bare Lightning Trainer costs on such tiny steps"]
    if walls:
        notes.append(f"whole default run `dlvision fit --config configs/circles_mlp.yaml` (150 epochs, start-up, "
                     f"validation, checkpoints, decision-boundary pictures): {statistics.median(walls):.1f} s wall "
                     f"(median of {len(walls)}: {', '.join(f'{w:.1f}' for w in walls)}); in the same loop, "
                     f"`python -c 'import torch'` took {statistics.median(torch_imports):.1f} s and "
                     f"`python -c 'import dlvision.cli'` {statistics.median(cli_imports):.1f} s (medians)")
    h.report(
        "MLP on circles (cpu, batch 10, 1 thread)",
        10,
        [("(a) dlvision fit (circles_mlp.yaml)", a_times), ("(b) plain loop + DataLoader(TensorDataset)", b_times),
         ("(c) model alone (fixed batch)", c_times), ("(d) bare Lightning Trainer + DataLoader", d_times),
         ("(a1) dlvision fit, one step per call (steps_per_execution 1)", a1_times)],
        notes,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
