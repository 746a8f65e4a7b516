"""How long the teacher-statistics cache's integrity check takes: build a synthetic cache of about ``--gib`` GiB with
the cache writer (random statistics in the real shard layout: 12 layers, rank 16, 4 rationale steps), time
``verify_cache`` (size + sha256 of the basis and every shard) and ``load_cache`` (the check, then reading every
shard), then delete the cache. The files were just written, so they are read from the page cache: the time is the
hashing cost; from a cold disk, reading the shards at all costs their size / disk bandwidth on top, check or not.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_verify.py --gib 1 --folder /tmp/lori-cache-verify
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lori.subspace.basis import Basis
from lori.methods.lori.cache import CacheWriter, cache_bytes, load_cache, verify_cache


def build(folder: Path, gib: float, layers: int = 12, rank: int = 16, steps: int = 4, shard_size: int = 5000) -> int:
    tri = rank * (rank + 1) // 2
    per_example = 4 * layers * (rank + tri + rank + 2 * steps * rank) + 1 + 2 * steps  # float32 + uint8 masks
    n = max(shard_size, int(gib * 2**30 / per_example) // shard_size * shard_size)
    writer = CacheWriter(folder, {"synthetic": True}, n, shard_size)
    d = 64
    U = torch.linalg.qr(torch.randn(layers, d, rank))[0]
    writer.write_basis(Basis(U, torch.rand(layers, d, dtype=torch.float64), torch.rand(layers, dtype=torch.float64)),
                       {"rank": rank, "layer_rank": None, "energy_captured": [0.9] * layers})
    g = torch.Generator().manual_seed(0)
    for i in range(writer.n_shards):
        start, end = writer.shard_range(i)
        m = end - start
        writer.write_shard(i, torch.randn(m, layers, rank, generator=g), torch.randn(m, layers, tri, generator=g),
                           torch.randn(m, layers, rank, generator=g), torch.ones(m, dtype=torch.bool),
                           prefix_mu=torch.randn(m, steps, layers, rank, generator=g),
                           prefix_valid=torch.ones(m, steps, dtype=torch.bool),
                           step_anchor=torch.randn(m, steps, layers, rank, generator=g),
                           step_valid=torch.ones(m, steps, dtype=torch.bool))
    writer.finish({"cache_bytes": cache_bytes(folder)})
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="approximate size of the shards (default 1)")
    ap.add_argument("--folder", help="where to build the cache (default: a new temporary folder); deleted after")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (the best is reported)")
    args = ap.parse_args()
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="lori-cache-verify-"))
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty; give a new folder (it is deleted afterwards)")
    try:
        t0 = time.perf_counter()
        n = build(folder, args.gib)
        built = time.perf_counter() - t0
        size = cache_bytes(folder)
        times = {"verify_cache": [], "load_cache (check + read)": []}
        for _ in range(args.repeat):
            t = time.perf_counter()
            info = verify_cache(folder)
            times["verify_cache"].append(time.perf_counter() - t)
            t = time.perf_counter()
            stats = load_cache(folder)
            times["load_cache (check + read)"].append(time.perf_counter() - t)
            del stats
        print(f"synthetic cache: {n} examples, {info['files']} files, {size / 2**30:.2f} GiB of shards "
              f"(built in {built:.0f} s) in {folder}")
        for name, ts in times.items():
            best = min(ts)
            print(f"{name}: {best:.2f} s (best of {len(ts)}; {size / 2**20 / best:.0f} MiB/s)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
