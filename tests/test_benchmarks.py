"""The benchmark scripts still run against the current configs and code (tiny data, a few steps).

They time nothing here: each runs (a), (b) and (c) for a couple of steps on generated data and
must print its whole table, with finite positive figures and the ratios.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_cifar_canonical, make_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--reps", "2", "--steps", "2", "--warmup", "1", "--workers", "0", "--no-write", "--device", "cpu"]


def run_benchmark(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def table_rows(output: str) -> dict[str, float]:
    """samples/s of each row of the printed table, by its label's first word: (a), (b), ..."""
    rows = re.findall(r"^\| (\([a-z0-9]+\))[^|]* \| ([0-9.]+) \| ([0-9.]+) \|", output, flags=re.M)
    return {label: float(throughput) for label, throughput, _ in rows}


def ratios(output: str) -> dict[str, float]:
    return {label: float(value) for label, value in re.findall(r"ratio \(a\)/(\([bc]\)) = ([0-9.]+)", output)}


def check_three(output: str) -> None:
    rows = table_rows(output)
    assert {"(a)", "(b)", "(c)"} <= set(rows) and all(v > 0 for v in rows.values())
    found = ratios(output)
    assert set(found) == {"(b)", "(c)"} and all(v > 0 for v in found.values())
    assert "median of the 2 paired repetitions" in output


def test_circles_benchmark_runs(tmp_path):
    output = run_benchmark("mlp_circles.py", *TINY, "--full-runs", "0")
    check_three(output)
    assert {"(d)", "(a1)"} <= set(table_rows(output))


def test_vit_benchmark_mirrors_the_config_shifts(tmp_path):
    make_mnist(tmp_path)
    output = run_benchmark("vit_mnist.py", *TINY, "--data-dir", str(tmp_path), "--extra", "--data.batch_size 8")
    check_three(output)
    assert "RandomCrop + ToTensor" in output  # vit.yaml shifts its training images: so does the reference


def test_cnn_benchmark_runs(tmp_path):
    make_cifar_canonical(tmp_path)
    output = run_benchmark("cnn_cifar10.py", *TINY, "--data-dir", str(tmp_path), "--batch-size", "8",
                           "--extra", "--data.val_size 10 --data.check_integrity false")
    check_three(output)


@pytest.mark.parametrize("script", ["vit_mnist.py"])
def test_benchmark_refuses_a_config_its_reference_cannot_mirror(tmp_path, script):
    make_mnist(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY, "--data-dir", str(tmp_path),
                           "--extra", "--data.batch_size 8 --data.normalize standardize"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "pick such a config" in done.stderr
