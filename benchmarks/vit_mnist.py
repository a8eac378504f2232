"""ViT training throughput on MNIST: dlvision's fit path against a course-style loop and the model alone.

    python benchmarks/vit_mnist.py --data-dir data

(a) ``dlvision fit --config configs/vit.yaml`` (course defaults: width 32, patch 7, 2 blocks, batch
    128, Adam; shifts of up to one pixel); (b) ``torchvision.datasets.MNIST`` + per-sample
    transforms mirroring the config (RandomCrop with the same padding, then ToTensor) + DataLoader
    (best num_workers) + a plain PyTorch loop; (c) the same step on a fixed batch. Same network,
    batch, optimizer and thread settings for all three.
"""

from __future__ import annotations

import shlex

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import _harness as h


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--config", default="configs/vit.yaml")
    p.add_argument("--extra", default="", help="more dlvision options for (a), one quoted string")
    args = p.parse_args()
    args.extra = shlex.split(args.extra)
    device = h.pick_device(args.device)
    cli, net = h.build_fit_path(["--config", args.config, "--data.data_dir", args.data_dir, *args.extra],
                                args.steps, args.warmup, args.reps, device)
    dm = cli.datamodule
    if dm.normalize != "none" or set(dm.augment) - {"pad_crop"}:
        raise SystemExit("the reference loop here mirrors normalize: none and at most the pad_crop shifts; "
                         f"got normalize={dm.normalize}, augment={dm.augment}: pick such a config")
    # the course-style equivalent of the config's data path, per sample: shifts (zero padding and a
    # random crop, flip as configured) on the PIL image, then ToTensor
    per_sample = []
    if "pad_crop" in dm.augment:
        options = {"padding": 4, "flip_p": 0.5, **dm.augment_options.get("pad_crop", {})}
        per_sample.append(transforms.RandomCrop(28, padding=options["padding"]))
        if options["flip_p"] > 0:
            per_sample.append(transforms.RandomHorizontalFlip(options["flip_p"]))
    reference = " + ".join([type(t).__name__ for t in per_sample] + ["ToTensor"])
    dataset = datasets.MNIST(args.data_dir, train=True, transform=transforms.Compose([*per_sample, transforms.ToTensor()]))

    def loader(workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=dm.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    x, y = torch.rand(dm.batch_size, 1, 28, 28), torch.randint(0, 10, (dm.batch_size,))
    a_times, b_times, c_times, best_w, per_w = h.compare_three(cli, net, loader, x, y, args, device)
    epoch = len(dm.train_set) / (dm.batch_size / np.median(a_times))
    h.report(
        f"ViT on MNIST ({device.type}, {args.config}, batch {dm.batch_size})",
        dm.batch_size,
        [("(a) dlvision fit", a_times),
         (f"(b) course loop: torchvision MNIST + {reference} + DataLoader (best num_workers={best_w})", b_times),
         ("(c) model alone (fixed batch)", c_times)],
        ["(b) ms/step by num_workers (one probe each): " + ", ".join(f"{w}: {1000 * t:.1f}" for w, t in per_w.items()),
         f"(a) implies {epoch:.0f} s per epoch of {len(dm.train_set)} training images (steps only)"],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
