"""``dlvision summary --config CONFIG [...]``: per-layer output shape, weights and receptive field of
the network a config builds (COURSE.md section 2, "Analysis the practical asks for").

Every option other than ``--input-size`` and ``--fcn`` goes to the Lightning CLI, so configs stack and
overrides work as for ``dlvision fit``: for example
``dlvision summary --config configs/cnn.yaml --model.init_args.net.init_args.batch_norm true``.
The input size defaults to what the data module feeds the network (CIFAR-10: 3x32x32, or the crop
size with ``crop_flip``; MNIST: 1x28x28; circles: 2 features); ``--input-size 3 64 64`` overrides it.
``--fcn`` also prints the fully-convolutional version of the course CNN on that input.
"""

from __future__ import annotations

import argparse
import sys

from torch import nn


def default_input_shape(datamodule) -> tuple[int, ...] | None:
    """The shape of one input the data module hands the network, from its options (no data loaded)."""
    channels = getattr(datamodule, "channels", None)
    name = type(datamodule).__name__.lower()
    if "cifar" in name:
        size = getattr(datamodule, "crop_size", 32) if "crop_flip" in getattr(datamodule, "augment", []) else 32
        return (channels or 3, size, size)
    if "mnist" in name:
        size = getattr(datamodule, "crop_size", 28) if "crop_flip" in getattr(datamodule, "augment", []) else 28
        return (channels or 1, size, size)
    if "circle" in name:
        return (2,)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlvision summary",
        description="Per layer: output shape, weights to learn and receptive field of a config's network.",
        epilog="Other options (--config, --model.*, --data.*) go to the Lightning CLI.",
    )
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="shape of one input without the batch dimension, e.g. 3 32 32 (default: from the data module)")
    parser.add_argument("--fcn", action="store_true", help="also analyse the fully-convolutional version of a CourseCNN")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dlvision.cli import run_cli
    from dlvision.models.analysis import analyse, format_table, to_fully_convolutional
    from dlvision.models.cnn import CourseCNN

    args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if not rest:
        print("dlvision summary: give a config, e.g. dlvision summary --config configs/cnn.yaml", file=sys.stderr)
        return 2
    argv0, sys.argv = sys.argv, sys.argv[:1]  # the CLI gets its arguments from `rest`, not from sys.argv
    try:
        cli = run_cli(rest + ["--trainer.logger", "false"], run=False)
    finally:
        sys.argv = argv0
    net: nn.Module = getattr(cli.model, "net", cli.model)
    shape = tuple(args.input_size) if args.input_size else default_input_shape(cli.datamodule)
    if shape is None:
        print(f"dlvision summary: cannot tell the input size of {type(cli.datamodule).__name__}: pass --input-size",
              file=sys.stderr)
        return 2
    print(f"{type(net).__name__} on inputs of {' x '.join(map(str, shape))}")
    try:
        print(format_table(analyse(net, shape), shape))
    except (ValueError, RuntimeError) as err:
        print(f"dlvision summary: {type(net).__name__} does not run on {shape}: {err}", file=sys.stderr)
        if not args.fcn:
            return 2
    if args.fcn:
        if not isinstance(net, CourseCNN):
            print(f"--fcn: only the course CNN has a fully-convolutional version, not {type(net).__name__}", file=sys.stderr)
            return 2
        fcn = to_fully_convolutional(net)
        print(f"\nfully-convolutional version (fc4, fc5 as 4x4 and 1x1 convolutions) on {' x '.join(map(str, shape))}")
        print(format_table(analyse(fcn, shape), shape))
    return 0
