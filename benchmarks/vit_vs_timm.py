"""Training-step time of dlvision's ViT against timm's VisionTransformer of identical size.

Both models get the same width, depth, heads, mlp_ratio, patch and a learned positional embedding
over the class token and the patches (so the parameter counts are equal, which is checked). One
training step = zero_grad, forward, cross-entropy, backward, Adam step, on a fixed random batch of
MNIST-sized images. All models are measured in the same run, interleaved round by round (so a
change in machine load hits them alike), after warm-up steps; the table shows the median time per
step over the rounds and the ratio ours / timm (below 1: ours is faster).

    python benchmarks/vit_vs_timm.py                      # the course default and the best setting
    python benchmarks/vit_vs_timm.py --rounds 30 --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dlvision.models import ViT

# name: (width, patch, depth, heads, mlp_ratio)
SETTINGS = {
    "course default": (32, 7, 2, 4, 4.0),
    "vit_best": (64, 7, 4, 4, 2.0),
    "student best": (64, 4, 4, 4, 4.0),
    "wider": (192, 4, 4, 3, 4.0),
}
DEFAULT_SETTINGS = ["course default", "vit_best", "student best"]


def build_pair(width: int, patch: int, depth: int, heads: int, mlp_ratio: float) -> dict[str, nn.Module]:
    from timm.models.vision_transformer import VisionTransformer

    ours = ViT(img_size=28, patch_size=patch, in_channels=1, num_classes=10, width=width, depth=depth,
               heads=heads, mlp_ratio=mlp_ratio, pos_embedding="learned", fused_attention=True)
    written = ViT(img_size=28, patch_size=patch, in_channels=1, num_classes=10, width=width, depth=depth,
                  heads=heads, mlp_ratio=mlp_ratio, pos_embedding="learned", fused_attention=False)
    theirs = VisionTransformer(img_size=28, patch_size=patch, in_chans=1, num_classes=10, embed_dim=width,
                               depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                               class_token=True, global_pool="token")
    counts = {sum(p.numel() for p in m.parameters()) for m in (ours, written, theirs)}
    if len(counts) != 1:
        raise AssertionError(f"the models differ in size: {counts}")
    return {"ours (sdpa)": ours, "ours (written out)": written, "timm": theirs}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(models: dict[str, nn.Module], device: torch.device, batch: int, warmup: int, rounds: int,
            steps: int) -> dict[str, list[float]]:
    """Median-ready lists of seconds per step, models interleaved in every round."""
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steppers = {name: make_step(model.to(device), x, y) for name, model in models.items()}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for r in range(rounds):
        order = list(steppers) if r % 2 == 0 else list(reversed(steppers))
        for name in order:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                steppers[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5, help="steps per model before timing")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (the median is over these)")
    parser.add_argument("--steps", type=int, default=3, help="steps per model per round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="*", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    import timm

    print(f"device {device}, torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.warmup} warm-up steps, median of {args.rounds} rounds x {args.steps} steps")
    header = (f"{'setting':<16} {'w/p/d/h/r':<16} {'params':>9} {'ours sdpa ms':>13} {'ours written ms':>16} "
              f"{'timm ms':>9} {'ours/timm':>10} {'written/timm':>13}")
    print(header)
    print("-" * len(header))
    for setting in args.settings:
        width, patch, depth, heads, ratio = SETTINGS[setting]
        models = build_pair(width, patch, depth, heads, ratio)
        params = sum(p.numel() for p in models["timm"].parameters())
        times = measure(models, device, args.batch_size, args.warmup, args.rounds, args.steps)
        med = {name: statistics.median(values) * 1000 for name, values in times.items()}
        print(f"{setting:<16} {f'{width}/{patch}/{depth}/{heads}/{ratio:g}':<16} {params:>9,} "
              f"{med['ours (sdpa)']:>13.2f} {med['ours (written out)']:>16.2f} {med['timm']:>9.2f} "
              f"{med['ours (sdpa)'] / med['timm']:>10.3f} {med['ours (written out)'] / med['timm']:>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
