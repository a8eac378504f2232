"""Seconds per training step, and per epoch, of timm's ViT-S from scratch on MNIST (configs/vit_timm.yaml).

    python benchmarks/timm_vit_small.py --data-dir data [--precision bf16-mixed] [--steps 10]

Runs ``dlvision fit --config configs/vit_timm.yaml`` (ViT-S, 28x28 inputs, patch 4: 49 tokens,
21.3 M parameters, batch 128) for a few steps after a warm-up and reports the median step time
and what it implies for one epoch of the 55,000 training images (steps only, no validation).
A whole epoch takes tens of minutes on a 2-core CPU: the real training run belongs on a GPU.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

import _harness as h


def main() -> None:
    p = h.parser(__doc__)
    p.set_defaults(steps=10, warmup=2, reps=1)
    p.add_argument("--precision", default="bf16-mixed", help="trainer precision (32-true, bf16-mixed)")
    args = p.parse_args()
    device = h.pick_device(args.device)
    config = ["--config", "configs/vit_timm.yaml", "--data.data_dir", args.data_dir,
              "--trainer.precision", args.precision]
    a_times, cli, net = h.dlvision_fit_path(config, args.steps, args.warmup, args.reps, device)
    step = statistics.median(a_times)
    batch = cli.datamodule.batch_size
    steps_per_epoch = math.ceil(len(cli.datamodule.train_set) / batch)
    params = sum(p.numel() for p in net.parameters())
    title = f"timm ViT-S from scratch on MNIST ({device.type}, {args.precision}, batch {batch})"
    text = "\n".join([
        f"## {title}", "",
        f"Machine: {h.machine()}  ",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}; command: `python benchmarks/timm_vit_small.py "
        f"--precision {args.precision} --steps {args.steps}`", "",
        f"- model: {cli.model.net.name if hasattr(cli.model.net, 'name') else type(net).__name__}, "
        f"{params:,} parameters, 28x28 inputs, patch 4 (49 tokens + class token)",
        f"- training step on the fit path: {1000 * step:.0f} ms (median of {len(a_times)} x {args.steps} steps "
        f"after {args.warmup} warm-up steps; repetitions: {', '.join(f'{1000 * t:.0f}' for t in a_times)} ms)",
        f"- one epoch of {len(cli.datamodule.train_set):,} images = {steps_per_epoch} steps: "
        f"{step * steps_per_epoch:.0f} s ({step * steps_per_epoch / 60:.1f} min) of training steps",
        f"- torch threads: {torch.get_num_threads()}", "",
    ])
    print(text)
    if not args.no_write:
        h.update_results(title, text)


if __name__ == "__main__":
    main()
