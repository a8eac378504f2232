"""Cost of dlvision's on-device batch pipeline for CIFAR-10, stage by stage, against the model's step.

    python benchmarks/data_pipeline.py --data-dir data [--batch-sizes 32 128] [--threads 2]

For each batch size: the batch slice out of the in-memory uint8 tensor, ``ToFloat``, the
standardization, the crop + flip augmentations (course crop 28 and padded crop 32), in
milliseconds per batch (median of the repetitions), next to the training step of the course CNN
on a fixed batch (channels_last + bf16 autocast, the fast CPU setting). The crop gather is also
timed in its former form (one advanced-indexing call with three broadcast index tensors) as the
reference of the two-``gather`` form now used. Uses the real training images when
``--data-dir`` holds CIFAR-10, random uint8 images of the same shape otherwise (said in the output).
"""

from __future__ import annotations

import statistics
import time

import torch

import _harness as h
from dlvision.data import CIFAR10DataModule
from dlvision.data.base import DatasetNotFoundError
from dlvision.data.transforms import Standardize, ToFloat, crop_indices, gather_crops, make_augmentation
from dlvision.models import CourseCNN


def index_gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The former ``gather_crops``: one advanced-indexing call (the reference)."""
    n = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    return x.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def median_ms(fn, steps: int, warmup: int, reps: int) -> float:
    times = h.time_loop(fn, steps, warmup, reps, torch.device("cpu"))
    return 1000 * statistics.median(times)


def main() -> None:
    p = h.parser(__doc__)
    p.set_defaults(steps=40, warmup=5, reps=5)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        images, _ = CIFAR10DataModule(args.data_dir).load(train=True)
        source = f"CIFAR-10 training images from {args.data_dir}"
    except DatasetNotFoundError:
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8)
        source = "random uint8 images (CIFAR-10 not found)"
    standardize = Standardize(3).fit(ToFloat()(images[:10000]))
    crop = make_augmentation("crop_flip", 28).train()
    pad_crop = make_augmentation("pad_crop", 32).train()
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for batch_size in args.batch_sizes:
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        raw = images[index]
        x = standardize(ToFloat()(raw))
        rows, cols = crop_indices(batch_size, 28, 32, 32, True, 0.5, x.device)
        assert torch.equal(index_gather(x, rows, cols), gather_crops(x, rows, cols))
        stages = {
            "slice the batch (uint8)": lambda: images[index],
            "ToFloat": lambda: ToFloat()(raw),
            "standardize": lambda: standardize(x),
            "crop 28 + flip (indices and gathers)": lambda: crop(x),
            "crop 28 gather alone: two gathers": lambda: gather_crops(x, rows, cols),
            "crop 28 gather alone: former one-index form": lambda: index_gather(x, rows, cols),
            "padded crop 32 + flip": lambda: pad_crop(x),
            "whole pipeline: slice, ToFloat, standardize, crop_flip": lambda: crop(standardize(ToFloat()(images[index]))),
        }
        times = {name: median_ms(fn, args.steps, args.warmup, args.reps) for name, fn in stages.items()}
        net = CourseCNN(num_classes=10).to(memory_format=torch.channels_last)
        step = h.model_alone_step(net, torch.randn(batch_size, 3, 28, 28), torch.randint(0, 10, (batch_size,)),
                                  torch.device("cpu"), lambda params: torch.optim.SGD(params, lr=0.01), bf16=True)
        model_ms = median_ms(step, max(10, args.steps // 4), 3, args.reps)
        rows_out.append((batch_size, times, model_ms))

    lines = ["## Data pipeline stages (cpu)", "", f"Machine: {h.machine()}  ",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {source}; command: `python benchmarks/data_pipeline.py "
             f"{' '.join(f'--batch-sizes {b}' for b in args.batch_sizes)}`", "",
             "| stage | " + " | ".join(f"batch {b}: ms | % of model step" for b, _, _ in rows_out) + " |",
             "|---|" + "---:|---:|" * len(rows_out)]
    for name in rows_out[0][1]:
        cells = " | ".join(f"{t[name]:.3f} | {100 * t[name] / m:.1f}" for _, t, m in rows_out)
        lines.append(f"| {name} | {cells} |")
    lines.append("| model step, CourseCNN channels_last + bf16 (fixed batch) | "
                 + " | ".join(f"{m:.2f} | 100" for _, _, m in rows_out) + " |")
    lines.append("")
    for b, t, _ in rows_out:
        lines.append(f"- batch {b}: two gathers vs the one-index form: "
                     f"{t['crop 28 gather alone: former one-index form'] / t['crop 28 gather alone: two gathers']:.2f}x faster")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        h.update_results("Data pipeline stages (cpu)", text)


if __name__ == "__main__":
    main()
