"""``dlvision svm``: the SVM bonus of chapter 1, linear and kernel SVMs with a sweep of C.

COURSE.md section 1, "SVM bonus": on circles a linear SVM fails (the classes are not linearly
separable), kernel SVMs (polynomial, RBF, sigmoid) do better or worse, and the regularisation C
changes the boundary. This fits scikit-learn's ``LinearSVC`` (kernel ``linear``) and ``SVC``
(``poly``, ``rbf``, ``sigmoid``) for every kernel and C asked, prints the table of test accuracy,
and for 2-D data draws every decision boundary on the course's 40x40 grid (PNG files and one
montage). scikit-learn is an optional extra: ``pip install -e '.[svm]'``.

    dlvision svm                                   # generated circles, all kernels, C = 1e-5 ... 100
    dlvision svm --mat-path data/circles/circles.mat
    dlvision svm --kernel rbf --C 1
    dlvision svm --data mnist --kernel linear rbf --C 0.1 1 10 --max-train 10000
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

KERNELS = ("linear", "poly", "rbf", "sigmoid")
DEFAULT_C = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
MISSING_SKLEARN = (
    "dlvision svm needs scikit-learn, an optional extra of dlvision: pip install -e '.[svm]' "
    "(or pip install scikit-learn)"
)


def load_data(name: str, data_dir: str, mat_path: str | None, max_train: int | None, seed: int):
    """(train_x, train_y, test_x, test_y) as float64/int64 tensors, inputs flattened to rows."""
    if name == "circles":
        from dlvision.data import CirclesDataModule

        module = CirclesDataModule(data_dir=data_dir, mat_path=mat_path)
    else:
        from dlvision.data import MNISTDataModule

        module = MNISTDataModule(data_dir=data_dir)
    train_x, train_y = module.load(train=True)
    test_x, test_y = module.load(train=False)
    if max_train is not None and max_train < len(train_y):
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))[:max_train]
        train_x, train_y = train_x[keep], train_y[keep]

    def rows(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).double()
        return x / 255.0 if name == "mnist" else x

    return rows(train_x), train_y.long(), rows(test_x), test_y.long()


def make_svm(kernel: str, C: float, degree: int, gamma: str | float, seed: int):
    """scikit-learn's LinearSVC for ``linear``, SVC with that kernel otherwise."""
    from sklearn.svm import SVC, LinearSVC

    if kernel == "linear":
        return LinearSVC(C=C, max_iter=20000, random_state=seed)
    return SVC(C=C, kernel=kernel, degree=degree, gamma=gamma, random_state=seed)


def scores_to_probs(scores, classes: int) -> torch.Tensor:
    """Decision-function values -> pseudo-probabilities for drawing (a sigmoid or a softmax)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.ndim == 1:  # binary: positive means the second class
        p = torch.sigmoid(2 * s)
        return torch.stack([1 - p, p], dim=1)
    return s.softmax(dim=1)


def run_sweep(train_x, train_y, test_x, test_y, kernels: Sequence[str], Cs: Sequence[float], degree: int = 3,
              gamma: str | float = "scale", seed: int = 0, grid_low: float = -2.0, grid_step: float = 0.1,
              grid_size: int = 40, scale: int = 5, draw: bool = True) -> list[dict]:
    """Fit every (kernel, C); each result has accuracies, fit time and, when drawn, the boundary image."""
    from sklearn.exceptions import ConvergenceWarning

    from dlvision.callbacks.decision_boundary import course_grid, render_boundary

    classes = int(max(train_y.max(), test_y.max())) + 1
    grid = course_grid(grid_low, grid_step, grid_size)
    draw = draw and train_x.shape[1] == 2
    results = []
    for kernel in kernels:
        for C in Cs:
            model = make_svm(kernel, C, degree, gamma, seed)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(train_x.numpy(), train_y.numpy())
            seconds = time.perf_counter() - start
            result = {
                "kernel": kernel, "C": C, "seconds": seconds,
                "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
                "train_acc": float((torch.as_tensor(model.predict(train_x.numpy())) == train_y).double().mean()),
                "test_acc": float((torch.as_tensor(model.predict(test_x.numpy())) == test_y).double().mean()),
            }
            if draw:
                scores = model.decision_function(grid.reshape(-1, 2).numpy())
                probs = scores_to_probs(scores, classes).reshape(grid_size, grid_size, -1)
                result["image"] = render_boundary(probs, [(train_x, train_y), (test_x, test_y)],
                                                  grid_low, grid_step, scale)
            results.append(result)
    return results


def format_table(results: list[dict], kernels: Sequence[str], Cs: Sequence[float]) -> str:
    """Markdown table: one row per kernel, one column per C, test accuracy in %."""
    by_key = {(r["kernel"], r["C"]): r for r in results}
    head = "| kernel | " + " | ".join(f"C={c:g}" for c in Cs) + " | best |"
    lines = [head, "|---|" + "---:|" * (len(Cs) + 1)]
    for kernel in kernels:
        row = [by_key[(kernel, c)] for c in Cs]
        cells = [f"{100 * r['test_acc']:.1f}" + ("" if r["converged"] else "*") for r in row]
        best = max(row, key=lambda r: r["test_acc"])
        lines.append(f"| {kernel} | " + " | ".join(cells) + f" | {100 * best['test_acc']:.1f} (C={best['C']:g}) |")
    return "\n".join(lines)


def save_pictures(results: list[dict], kernels: Sequence[str], Cs: Sequence[float], out: Path) -> list[Path]:
    """One PNG per (kernel, C) and ``svm_boundaries.png``: kernels in rows, C in columns."""
    from torchvision.utils import make_grid

    from dlvision.callbacks.decision_boundary import save_png

    paths, tiles = [], []
    for r in results:
        paths.append(save_png(r["image"], out / f"svm_{r['kernel']}_C{r['C']:g}.png"))
    by_key = {(r["kernel"], r["C"]): r["image"] for r in results}
    for kernel in kernels:
        for c in Cs:
            tiles.append(by_key[(kernel, c)].permute(2, 0, 1))
    montage = make_grid(torch.stack(tiles), nrow=len(Cs), padding=4, pad_value=255)
    paths.append(save_png(montage.permute(1, 2, 0), out / "svm_boundaries.png"))
    return paths


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"C must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def gamma_value(text: str) -> str | float:
    if text in ("scale", "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gamma must be 'scale', 'auto' or a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"gamma must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlvision svm",
        description="Linear and kernel SVMs (scikit-learn) on circles or MNIST: test accuracy for every "
                    "kernel and C, and the decision boundaries on the course's grid for 2-D data.",
    )
    parser.add_argument("--data", choices=("circles", "mnist"), default="circles")
    parser.add_argument("--data-dir", default="data", help="data folder (default: data)")
    parser.add_argument("--mat-path", default=None,
                        help="circles: the course's circles.mat (default: the built-in generator)")
    parser.add_argument("--kernel", "--kernels", dest="kernels", nargs="+", choices=KERNELS, default=list(KERNELS),
                        help="kernels to fit (default: all four)")
    parser.add_argument("--C", dest="Cs", nargs="+", type=positive_float, default=list(DEFAULT_C),
                        help="regularisation values (default: 1e-5 1e-4 ... 100)")
    parser.add_argument("--degree", type=positive_int, default=3, help="degree of the poly kernel (default 3)")
    parser.add_argument("--gamma", type=gamma_value, default="scale", help="scale (default), auto or a number")
    parser.add_argument("--max-train", type=positive_int, default=None,
                        help="fit on a random subset of this many training samples (default: all for circles, "
                             "10000 for mnist)")
    parser.add_argument("--out", default="lightning_logs/svm",
                        help="folder for the pictures and results.csv (default: lightning_logs/svm)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the decision boundaries")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import sklearn.svm  # noqa: F401
    except ImportError:
        print(MISSING_SKLEARN, file=sys.stderr)
        return 2
    if args.mat_path and args.data != "circles":
        build_parser().error("--mat-path is for --data circles")
    max_train = args.max_train if args.max_train or args.data == "circles" else 10000
    kernels = list(dict.fromkeys(args.kernels))
    Cs = list(dict.fromkeys(args.Cs))
    train_x, train_y, test_x, test_y = load_data(args.data, args.data_dir, args.mat_path, max_train, args.seed)
    source = args.mat_path or ("generated circles" if args.data == "circles" else f"{args.data_dir} (MNIST)")
    print(f"SVMs on {args.data} ({source}): {len(train_y)} train, {len(test_y)} test samples; "
          f"test accuracy (%) per kernel and C")
    results = run_sweep(train_x, train_y, test_x, test_y, kernels, Cs, args.degree, args.gamma, args.seed,
                        draw=not args.no_plots)
    print(format_table(results, kernels, Cs))
    if not all(r["converged"] for r in results):
        print("* the solver stopped at its iteration limit before converging")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["kernel", "C", "train_acc", "test_acc", "seconds", "converged"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: r[k] for k in writer.fieldnames})
    print(f"results: {out / 'results.csv'}")
    if any("image" in r for r in results):
        paths = save_pictures(results, kernels, Cs, out)
        print(f"decision boundaries: {len(paths) - 1} PNGs and the montage {paths[-1]} "
              f"(rows: {', '.join(kernels)}; columns: C = {', '.join(f'{c:g}' for c in Cs)})")
    return 0
