"""CNN training throughput on CIFAR-10: dlvision's fit path against a course-style loop and the model alone.

    python benchmarks/cnn_cifar10.py --data-dir data

(a) ``dlvision fit --config configs/cnn.yaml`` with standardization and the course augmentation
    (random crop 28 + flip) on; (b) torchvision-style dataset (PIL image per sample, as
    torchvision.datasets.CIFAR10 does) + RandomCrop(28), RandomHorizontalFlip, ToTensor, Normalize +
    DataLoader (best num_workers) + a plain PyTorch loop; (c) the same step on a fixed batch.
Same network (CourseCNN), batch size, optimizer (SGD lr 0.01) and thread settings for all three.
"""

from __future__ import annotations

import shlex

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

import _harness as h


class ArrayCIFAR(VisionDataset):
    """CIFAR-10 held as an HWC uint8 array, one PIL image per sample: torchvision's CIFAR10 access path."""

    def __init__(self, images: np.ndarray, labels: list[int], transform) -> None:
        super().__init__(root=None, transform=transform)
        self.data, self.targets = images, labels

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        return self.transform(img), self.targets[index]

    def __len__(self) -> int:
        return len(self.data)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--extra", default="", help="more dlvision options for (a), one quoted string, e.g. '--model.init_args.channels_last true'")
    args = p.parse_args()
    args.extra = shlex.split(args.extra)
    device = h.pick_device(args.device)
    config = ["--config", "configs/cnn.yaml", "--data.data_dir", args.data_dir, "--data.normalize", "standardize",
              "--data.augment", "[crop_flip]", "--data.batch_size", str(args.batch_size), *args.extra]
    cli, net = h.build_fit_path(config, args.steps, args.warmup, args.reps, device)

    dm = cli.datamodule
    images = dm.train_set.inputs.permute(0, 2, 3, 1).numpy()
    labels = dm.train_set.targets.tolist()
    std = dm.transform[1]
    tf = transforms.Compose([transforms.RandomCrop(28), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(std.mean.tolist(), std.std.tolist())])
    dataset = ArrayCIFAR(images, labels, tf)

    def loader(workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    x = torch.randn(args.batch_size, 3, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    a_times, b_times, c_times, best_w, per_w = h.compare_three(cli, net, loader, x, y, args, device)
    epoch = len(dm.train_set) / (args.batch_size / np.median(a_times))
    h.report(
        f"CNN on CIFAR-10 ({device.type}, batch {args.batch_size}{', ' + ' '.join(args.extra) if args.extra else ''})",
        args.batch_size,
        [("(a) dlvision fit (standardize + crop/flip on the device)", a_times),
         (f"(b) course loop: per-sample transforms + DataLoader (best num_workers={best_w})", b_times),
         ("(c) model alone (fixed batch)", c_times)],
        [f"(b) ms/step by num_workers (one probe each): " + ", ".join(f"{w}: {1000 * t:.1f}" for w, t in per_w.items()),
         f"(a) implies {epoch:.0f} s per epoch of {len(dm.train_set)} training images (steps only, without validation)"],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
