"""Fit a StandardScaler on an array larger than memory, generated lazily by blocks: dask
``fit`` (blocks reduced where they are made, merged in a tree) against streaming the same
blocks through ``partial_fit`` in a Python loop. Each mode runs in its own process; prints
seconds, rows/s and the process's peak RSS.

    python scripts/data_dask_out_of_core.py --rows 200_000_000 --block 1_000_000

(2e8 x 32 float32 = 25.6 GB.)
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np

FEATURES = 32


def make_block(seed: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, FEATURES), dtype=np.float32) * 3 + 100


def run(mode: str, rows: int, block: int) -> None:
    from normkit.data import StandardScaler

    n_blocks = rows // block
    t0 = time.perf_counter()
    if mode == "dask":
        import dask.array as da

        def gen(block_info=None):
            (start, _), _ = block_info[None]["array-location"]
            return make_block(start // block, block)

        X = da.map_blocks(gen, chunks=((block,) * n_blocks, (FEATURES,)), dtype=np.float32)
        sc = StandardScaler().fit(X)
    else:
        sc = StandardScaler()
        for i in range(n_blocks):
            sc.partial_fit(make_block(i, block))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{mode:9s} rows={rows:.1e} GB={rows * FEATURES * 4 / 1e9:.1f} seconds={dt:.1f} "
        f"rows/s={rows / dt:.3e} peak_rss_GB={peak:.2f} mean[0]={sc.mean_[0]:.6f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--block", type=int, default=1_000_000)
    p.add_argument("--mode", choices=["dask", "streaming"])
    a = p.parse_args()
    if a.mode:
        run(a.mode, a.rows, a.block)
        return
    for mode in ("streaming", "dask"):
        cmd = [sys.executable, __file__, "--rows", str(a.rows), "--block", str(a.block)]
        subprocess.run([*cmd, "--mode", mode], check=True)


if __name__ == "__main__":
    main()
