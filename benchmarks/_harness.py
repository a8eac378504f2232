"""Shared machinery of the benchmarks: the three training paths measured side by side, medians,
the machine's description, and the RESULTS.md table.

(a) dlvision's own ``fit`` path (LightningCLI config, data module, on-device transforms, logging);
(b) the course-style reference: torchvision dataset + per-sample transforms + DataLoader + a plain
    PyTorch loop, with its best ``num_workers``;
(c) the model alone: the same optimizer step on one fixed batch already on the device.
Each is warmed up, then timed over several repetitions, interleaved: after each epoch of (a), one
repetition of (b) and one of (c) run, so that all three share the drifts of a shared machine.
The median throughput is reported, and the ratio of the best repetitions as a check, and the median
of the ratios of paired repetitions (each repetition of (a) against those that ran right after it),
which cancels drifts of the machine's speed slower than a repetition.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", default="data", help="folder with the real data (../shared/data/unpack.sh data)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before each repetition")
    p.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="num_workers tried for the reference loop")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    return p


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def machine() -> str:
    """CPU model, cores, torch version and threads, GPU if any."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {gpu}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loop(step: Callable[[], None], steps: int, warmup: int, reps: int, device: torch.device) -> list[float]:
    """Seconds per step of ``step`` for each repetition (after ``warmup`` untimed steps each)."""
    times = []
    for _ in range(reps):
        for _ in range(warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return times


class StepTimer(Callback):
    """Times the optimizer steps of each epoch after ``warmup`` steps (batch end to batch end,
    divided by the optimizer steps in between: a call may hold several, see steps_per_execution)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.per_epoch: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps: list[tuple[float, int]] = []
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.stamps.append((time.perf_counter(), trainer.global_step))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        timed = [(t, step) for t, step in self.stamps if step - self.start_step >= self.warmup]
        if len(timed) >= 2:
            self.per_epoch.append((timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1]))


def build_fit_path(config_args: list[str], steps: int, warmup: int, reps: int, device: torch.device):
    """(a)'s objects, built from the config but not run, with the data loaded and set up (so that
    (b) and (c) can be made from them), and an untrained copy of the network for (b) and (c)."""
    from dlvision.cli import run_cli

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    extra = ["--trainer.precision", "bf16-mixed"] if device.type == "cuda" else []
    logs = tempfile.mkdtemp(prefix="dlvision-bench-")
    cli = run_cli([*config_args, "--trainer.accelerator", accelerator, "--trainer.devices", "1",
                   "--trainer.max_epochs", str(reps), "--trainer.limit_train_batches", str(warmup + steps),
                   "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                   "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                   "--trainer.logger.init_args.save_dir", logs, "--checkpoint.monitor", "null",
                   "--checkpoint.save_last", "false", *extra], run=False)
    # limit_train_batches counts calls of training_step, which may hold several steps each
    per_call = getattr(cli.model, "steps_per_execution", 1)
    cli.trainer.limit_train_batches = -(-(warmup + steps + per_call) // per_call)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")  # fit's own setup() then finds the data in place
    initial = copy.deepcopy(cli.model.net)  # an untrained copy for (b) and (c), with the same optimizer
    return cli, initial


class Interleave(Callback):
    """After each training epoch of (a), one timed repetition of every other path: all paths then
    see the same drifts of a shared machine (clock, neighbours), which sequential runs do not."""

    def __init__(self, paths: dict[str, Callable[[], None]], steps: int, warmup: int, device: torch.device) -> None:
        self.paths, self.steps, self.warmup, self.device = paths, steps, warmup, device
        self.times: dict[str, list[float]] = {name: [] for name in paths}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for name, step in self.paths.items():
            self.times[name] += time_loop(step, self.steps, self.warmup, 1, self.device)


def run_fit_path(cli, others: dict[str, Callable[[], None]], steps: int, warmup: int, device: torch.device):
    """Run (a) (one epoch of ``warmup + steps`` batches per repetition), with one repetition of each
    of ``others`` after every epoch; returns (a)'s seconds per step and those of the others."""
    timer, interleave = StepTimer(warmup), Interleave(others, steps, warmup, device)
    cli.trainer.callbacks += [timer, interleave]
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.per_epoch, interleave.times


def dlvision_fit_path(config_args: list[str], steps: int, warmup: int, reps: int, device: torch.device):
    """(a) alone: seconds per step of ``dlvision fit`` on a config, the CLI object and the untrained net."""
    cli, initial = build_fit_path(config_args, steps, warmup, reps, device)
    a_times, _ = run_fit_path(cli, {}, steps, warmup, device)
    return a_times, cli, initial


def plain_loop_step(net: torch.nn.Module, batches: Iterable, device: torch.device,
                    make_optimizer: Callable) -> Callable[[], None]:
    """(b)'s step: the course's loop body (forward, loss, backward, optimizer step, running loss/acc)."""
    net = net.to(device).train()
    optimizer = make_optimizer(net.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    iterator = iter(batches)
    amp = device.type == "cuda"

    def step() -> None:
        nonlocal iterator
        try:
            x, y = next(iterator)
        except StopIteration:
            iterator = iter(batches)
            x, y = next(iterator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
            loss = criterion(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step.loss += loss.item()  # the course loop keeps running totals
        step.correct += (out.argmax(1) == y).sum().item()

    step.loss, step.correct = 0.0, 0
    return step


def model_alone_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                     make_optimizer: Callable, bf16: bool | None = None) -> Callable[[], None]:
    """(c)'s step: forward, loss, backward, optimizer step on one fixed batch already on the device,
    in the memory format of the network's weights and with bf16 autocast when (a) used it."""
    net = net.to(device).train()
    optimizer = make_optimizer(net.parameters())
    x, y = x.to(device), y.to(device)
    if x.dim() == 4 and any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                            and not p.is_contiguous() for p in net.parameters()):
        x = x.contiguous(memory_format=torch.channels_last)
    amp = device.type == "cuda" if bf16 is None else bf16

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def course_net(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of the network as PyTorch makes it (NCHW), whatever memory format (a) was configured with."""
    return copy.deepcopy(net).to(memory_format=torch.contiguous_format)


def pick_workers(make_loader: Callable[[int], Iterable], net: torch.nn.Module, workers: list[int], steps: int,
                 warmup: int, device: torch.device, make_optimizer: Callable) -> tuple[int, dict[int, float]]:
    """(b)'s best ``num_workers`` among ``workers`` (one probe repetition each); returns it and each one's
    seconds per step."""
    probes = {}
    for w in workers:
        loader = make_loader(w)
        step = plain_loop_step(course_net(net), loader, device, make_optimizer)
        probes[w] = time_loop(step, steps, warmup, 1, device)[0]
        del step, loader
    return min(probes, key=probes.get), probes


def compare_three(cli, net: torch.nn.Module, make_loader: Callable[[int], Iterable], x: torch.Tensor,
                  y: torch.Tensor, args, device: torch.device):
    """The whole comparison: (b)'s best ``num_workers``, then (a) with (b) and (c) interleaved.
    Returns (a, b, c seconds per step, best workers, each probed worker count's seconds per step)."""
    make_optimizer = cli.model.optimizer_factory
    best_w, per_w = pick_workers(make_loader, net, args.workers, args.steps, args.warmup, device, make_optimizer)
    others = {
        "b": plain_loop_step(course_net(net), make_loader(best_w), device, make_optimizer),
        "c": model_alone_step(copy.deepcopy(net), x, y, device, make_optimizer,
                              bf16=cli.trainer.precision == "bf16-mixed"),
    }
    a_times, times = run_fit_path(cli, others, args.steps, args.warmup, device)
    return a_times, times["b"], times["c"], best_w, per_w


def report(title: str, batch_size: int, rows: list[tuple[str, list[float]]], notes: list[str], write: bool,
           reference_row: int = 1, model_row: int = 2, command: str = "") -> str:
    """Print (and write to RESULTS.md) a table of samples/s with the ratios to (b) and (c)."""
    median = {name: statistics.median(t) for name, t in rows}
    throughput = {name: batch_size / s for name, s in median.items()}
    names = [name for name, _ in rows]
    lines = [f"## {title}", "", f"Machine: {machine()}  ", f"Measured {time.strftime('%Y-%m-%d %H:%M')}; command: `{command or ' '.join(sys.argv)}`", "",
             "| path | samples/s (median) | ms/step | reps (samples/s) |", "|---|---:|---:|---|"]
    for name, times in rows:
        reps = ", ".join(f"{batch_size / t:.0f}" for t in times)
        lines.append(f"| {name} | {throughput[name]:.0f} | {1000 * median[name]:.2f} | {reps} |")
    lines.append("")
    a = names[0]
    best = {name: min(t) for name, t in rows}
    for label, row in (("(b)", reference_row), ("(c)", model_row)):
        if row is not None and len(names) > row:
            other = names[row]
            paired = ""
            a_times, other_times = rows[0][1], rows[row][1]
            if len(a_times) == len(other_times) > 1:  # interleaved: repetition i of (a), then of the others
                pairs = statistics.median(o / t for t, o in zip(a_times, other_times))
                paired = f"; median of the {len(a_times)} paired repetitions: {pairs:.2f}"
            lines.append(f"- ratio (a)/{label} = {throughput[a] / throughput[other]:.2f} "
                         f"(medians; best repetition of each: {best[other] / best[a]:.2f}{paired})")
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        update_results(title, text)
    return text


def update_results(title: str, text: str) -> None:
    """Replace the section called ``title`` in RESULTS.md (or append it)."""
    header = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each section is replaced when its script runs again.\n\n"
    current = RESULTS.read_text() if RESULTS.exists() else header
    sections = current.split("\n## ")
    kept = [sections[0]] + [s for s in sections[1:] if not s.startswith(title + "\n")]
    new = "\n## ".join(kept).rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)
