"""Time the ZCA/PCA whitening fit on the CIFAR-10 training set (50,000 x 3,072), chapter 2.

    python benchmarks/zca_fit.py --data-dir data [--threads 2] [--eps 0.01]

Loads the decoded uint8 training images, then times ``Whitening.fit`` without a cache (mean and
covariance in float64, symmetric eigen-decomposition), checks the whitened covariance on a subset,
and times a second fit served from the on-disk cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dlvision.data import CIFAR10DataModule
from dlvision.data.transforms import ToFloat, Whitening, _fingerprint, _integer_gram, uint8_levels


def timed(label: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    print(f"  {label}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, _ = CIFAR10DataModule(args.data_dir).load(train=True)
    x = ToFloat()(images)
    print(f"training set: {tuple(x.shape)}, {args.threads} threads, eps {args.eps}")
    flat = x.reshape(len(x), -1)
    print("phases:")
    timed("fingerprint (cache key, sha1 of the float images)", lambda: _fingerprint(flat))
    q = timed("uint8 check", lambda: uint8_levels(flat))
    sums, gram = timed("exact covariance (int8 products)", lambda: _integer_gram(q))
    n = len(q)
    cov = (gram - n * torch.outer(sums / n, sums / n)) / 255.0**2 / (n - 1)
    timed("eigh (float64, 3072 x 3072)", lambda: torch.linalg.eigh(cov))
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        zca = Whitening(3, "zca", eps=args.eps, cache_dir=cache).fit(x)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again = Whitening(3, "zca", eps=args.eps, cache_dir=cache).fit(x)
        warm = time.perf_counter() - start
    assert again.cache_hit and torch.equal(again.matrix, zca.matrix)
    z = zca(x[:10000]).reshape(10000, -1).double()
    cov = torch.cov(z.T)
    s = zca.eigenvalues
    print(f"eigenvalues: max {s.max():.3f}, min {s.min():.2e}; {(s > args.eps).sum()} of {len(s)} above eps")
    print(f"whitened covariance (10,000 images): diagonal mean {cov.diagonal().mean():.3f}, "
          f"largest off-diagonal |c| {(cov - torch.diag(cov.diagonal())).abs().max():.3f}")
    print(f"ZCA fit, no cache: {cold:.1f} s (hash + float64 mean/covariance + eigh); from the cache: {warm:.1f} s")


if __name__ == "__main__":
    main()
