"""``dlvision gradcost``: the cost of gradients, naive (finite differences) against back-propagation.

COURSE.md section 1, "Cost of gradients": the naive way takes each parameter on its own and
measures how the loss moves, here with central differences, two forward passes per parameter;
back-propagation gets all of them in one backward pass, about the cost of a forward pass. For tanh
MLPs of growing depth this times both (back-propagation written by hand, as in ``impl=manual``, and
by autograd) and prints a table. It is a second gradient check: the three gradients must agree
(relative error below ``--tolerance``), else the command fails.

    dlvision gradcost --depths 1 2 4 8 --width 10
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from dlvision.tasks.scratch import cross_entropy, mlp_backward, mlp_forward, softmax


def make_problem(depth: int, width: int, in_features: int, classes: int, batch: int, init_std: float, seed: int):
    """Random float64 parameters of a tanh MLP (``depth`` hidden layers of ``width``) and a batch."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [in_features] + [width] * depth + [classes]
    weights = [torch.randn(o, i, generator=gen, dtype=torch.float64) * init_std for i, o in zip(sizes, sizes[1:])]
    biases = [torch.randn(o, generator=gen, dtype=torch.float64) * init_std for o in sizes[1:]]
    x = torch.randn(batch, in_features, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return weights, biases, x, F.one_hot(labels, classes).double()


def loss_of(weights, biases, x, y) -> torch.Tensor:
    return cross_entropy(mlp_forward(x, weights, biases)[1], y)


@torch.no_grad()
def naive_gradients(weights, biases, x, y, eps: float) -> list[torch.Tensor]:
    """∂l/∂θ for every scalar θ, one at a time: (l(θ + ε) − l(θ − ε)) / 2ε. 2 forward passes each."""
    grads = []
    for p in weights + biases:
        g = torch.empty_like(p)
        flat, flat_g = p.view(-1), g.view(-1)
        for i in range(flat.numel()):
            keep = flat[i].item()
            flat[i] = keep + eps
            plus = loss_of(weights, biases, x, y).item()
            flat[i] = keep - eps
            minus = loss_of(weights, biases, x, y).item()
            flat[i] = keep
            flat_g[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


@torch.no_grad()
def hand_gradients(weights, biases, x, y) -> list[torch.Tensor]:
    """One forward and one hand-written backward pass (``mlp_backward``)."""
    hiddens, y_tilde = mlp_forward(x, weights, biases)
    grad_w, grad_b = mlp_backward(x, hiddens, softmax(y_tilde), y, weights)
    return grad_w + grad_b


def autograd_gradients(weights, biases, x, y) -> list[torch.Tensor]:
    """One forward pass and ``backward()``."""
    params = [p.detach().requires_grad_() for p in weights + biases]
    loss_of(params[: len(weights)], params[len(weights):], x, y).backward()
    return [p.grad for p in params]


def timed(fn: Callable[[], list[torch.Tensor]], repeats: int) -> tuple[float, list[torch.Tensor]]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a − b| / max(1e-12, max |b|) over all the gradients."""
    diff = max(float((p - q).abs().max()) for p, q in zip(a, b))
    scale = max(float(q.abs().max()) for q in b)
    return diff / max(scale, 1e-12)


def measure(depths: Sequence[int], width: int = 10, in_features: int = 2, classes: int = 2, batch: int = 10,
            eps: float = 1e-6, repeats: int = 3, init_std: float = 0.3, seed: int = 0) -> list[dict]:
    """One row per depth: parameter count, times (s) and the relative errors between the gradients."""
    rows = []
    for depth in depths:
        weights, biases, x, y = make_problem(depth, width, in_features, classes, batch, init_std, seed)
        n_params = sum(p.numel() for p in weights + biases)
        t_forward, _ = timed(lambda: [loss_of(weights, biases, x, y)], repeats)
        t_naive, naive = timed(lambda: naive_gradients(weights, biases, x, y, eps), 1)
        t_hand, hand = timed(lambda: hand_gradients(weights, biases, x, y), repeats)
        t_auto, auto = timed(lambda: autograd_gradients(weights, biases, x, y), repeats)
        rows.append({
            "depth": depth, "params": n_params, "forward_passes_naive": 2 * n_params,
            "t_forward": t_forward, "t_naive": t_naive, "t_hand": t_hand, "t_autograd": t_auto,
            "err_naive": relative_error(naive, auto), "err_hand": relative_error(hand, auto),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| hidden layers | parameters | naive: forward passes | forward (ms) | naive (ms) | "
            "backprop by hand (ms) | autograd (ms) | naive / backprop | rel. error naive | rel. error hand |")
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['depth']} | {r['params']} | {r['forward_passes_naive']} | {1e3 * r['t_forward']:.3f} | "
            f"{1e3 * r['t_naive']:.1f} | {1e3 * r['t_hand']:.3f} | {1e3 * r['t_autograd']:.3f} | "
            f"{r['t_naive'] / r['t_hand']:.0f}x | {r['err_naive']:.1e} | {r['err_hand']:.1e} |"
        )
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlvision gradcost",
        description="Time the naive gradient (finite differences, parameter by parameter) against "
                    "back-propagation for tanh MLPs of growing depth, and check that they agree.",
    )
    parser.add_argument("--depths", type=positive_int, nargs="+", default=[1, 2, 4, 8],
                        help="numbers of hidden layers (default: 1 2 4 8)")
    parser.add_argument("--width", type=positive_int, default=10, help="units per hidden layer (default 10)")
    parser.add_argument("--in-features", type=positive_int, default=2, help="input size (default 2, circles)")
    parser.add_argument("--classes", type=positive_int, default=2, help="number of classes (default 2)")
    parser.add_argument("--batch", type=positive_int, default=10, help="batch size (default 10)")
    parser.add_argument("--eps", type=positive_float, default=1e-6, help="finite-difference step (default 1e-6)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timings keep the best of this many runs")
    parser.add_argument("--init-std", type=positive_float, default=0.3, help="parameters ~ N(0, init_std)")
    parser.add_argument("--tolerance", type=positive_float, default=1e-5,
                        help="largest relative error accepted between the gradients (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.classes < 2:
        build_parser().error("--classes must be at least 2")
    torch.set_num_threads(1)  # timings of small operations: one thread is steadier
    rows = measure(args.depths, args.width, args.in_features, args.classes, args.batch, args.eps,
                   args.repeats, args.init_std, args.seed)
    print(f"Gradient of the mean cross-entropy of a tanh MLP (width {args.width}, batch {args.batch}, float64), "
          f"best of {args.repeats} runs; naive = central differences, one run")
    print(format_table(rows))
    bad = [r["depth"] for r in rows if max(r["err_naive"], r["err_hand"]) > args.tolerance]
    if bad:
        print(f"gradient check FAILED for depth {bad}: relative error above {args.tolerance}")
        return 1
    print(f"gradient check passed: naive, hand-written and autograd gradients agree within {args.tolerance}")
    return 0
