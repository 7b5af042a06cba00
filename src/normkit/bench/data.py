"""``normkit bench --data``: streaming ``StandardScaler`` vs scikit-learn.

The job a streaming scaler exists for: one pass of ``partial_fit`` over chunks of a data set
that does not fit in memory, then one pass of ``transform`` over the same chunks. Full size:
1e7 × 32 float32 in chunks of 1e5 rows (``--quick``: 1e6 rows). Chunks cycle through a pool of
distinct random blocks (an offset and per-feature scales, so the numerics matter), so memory
stays at the pool's size. Rows report the time of each pass, the speed-up over scikit-learn
(total), and the largest differences from scikit-learn's statistics and outputs, checked in
an untimed pass (``max |Δ out|`` is 0 when the outputs are bit-identical). normkit runs once
with one torch thread (scikit-learn's numpy passes are single-threaded: the like-for-like
row) and once with the default thread count (torch's and numba's). normkit's CPU passes are
single-threaded by design (serial Numba kernels and numpy ufuncs: on a small shared machine a
second thread cost more than it brought), so the two rows measure the same code and differ
only by noise; a row far below the other would mean a thread pool crept back in.

scikit-learn is imported only when the suite runs (it is the ``data`` extra).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from normkit._optional import installed, require
from normkit.bench._registry import register_suite

__all__ = ["run_data_bench"]

FEATURES = 32
CHUNK = 100_000


def _pool(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 10, FEATURES).astype(np.float32)
    offset = rng.uniform(-100, 100, FEATURES).astype(np.float32)
    return [
        rng.standard_normal((CHUNK, FEATURES), dtype=np.float32) * scale + offset for _ in range(n)
    ]


def _set_threads(n: int) -> None:
    """Thread count of torch and, when installed, numba (the moments kernel's pool)."""
    torch.set_num_threads(n)
    if not installed("numba"):
        return
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _time_passes(
    make: Callable[[], Any], chunks: list[Any], reps: int, sync: Callable[[], None]
) -> tuple[float, float]:
    """Median seconds of the fit pass and of the transform pass."""
    fit_t, tr_t = [], []
    for _ in range(reps):
        sc = make()
        sync()
        t0 = time.perf_counter()
        for c in chunks:
            sc.partial_fit(c)
        sync()
        t1 = time.perf_counter()
        for c in chunks:
            sc.transform(c)
        sync()
        t2 = time.perf_counter()
        fit_t.append(t1 - t0)
        tr_t.append(t2 - t1)
    return statistics.median(fit_t), statistics.median(tr_t)


def _compare(ours: Any, theirs: Any, chunks: list[Any], pool: list[np.ndarray]) -> dict[str, float]:
    """Largest differences from scikit-learn: statistics, and outputs over every distinct chunk."""

    def host(v: Any) -> np.ndarray:
        return v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    d_mean = float(np.max(np.abs(host(ours.mean_) - theirs.mean_)))
    d_var = float(np.max(np.abs(host(ours.var_) - theirs.var_) / theirs.var_))
    d_out = 0.0
    for c, ref in zip(chunks[: len(pool)], pool, strict=True):
        d_out = max(d_out, float(np.max(np.abs(host(ours.transform(c)) - theirs.transform(ref)))))
    return {"max |Δ mean|": d_mean, "max rel Δ var": d_var, "max |Δ out|": d_out}


def run_data_bench(quick: bool, reps: int | None = None) -> list[dict[str, Any]]:
    """Time the streaming StandardScaler (fit pass + transform pass) for scikit-learn and
    normkit on numpy, torch CPU tensors and (when available) CUDA tensors."""
    preprocessing = require("sklearn.preprocessing", extra="data", feature="normkit bench --data")
    from normkit.data import StandardScaler

    n_rows = 1_000_000 if quick else 10_000_000
    reps = reps or 3
    pool = _pool(4 if quick else 10)
    n_chunks = n_rows // CHUNK
    np_chunks = [pool[i % len(pool)] for i in range(n_chunks)]

    def no_sync() -> None:
        return None

    threads = torch.get_num_threads()
    t_pool = [torch.from_numpy(p) for p in pool]
    t_chunks = [t_pool[i % len(pool)] for i in range(n_chunks)]
    # (impl, class, chunks, sync, torch threads); scikit-learn's passes are single-threaded numpy
    cases: list[tuple[str, Any, list[Any], Callable[[], None], int]] = [
        ("scikit-learn", preprocessing.StandardScaler, np_chunks, no_sync, 1),
        ("normkit", StandardScaler, np_chunks, no_sync, 1),
        ("normkit", StandardScaler, np_chunks, no_sync, threads),
        ("normkit", StandardScaler, t_chunks, no_sync, threads),
    ]
    if torch.cuda.is_available():
        g_pool = [p.cuda() for p in t_pool]
        g_chunks = [g_pool[i % len(pool)] for i in range(n_chunks)]
        cases.append(("normkit", StandardScaler, g_chunks, torch.cuda.synchronize, threads))

    ref = preprocessing.StandardScaler()
    for c in np_chunks:
        ref.partial_fit(c)
    rows = []
    base_total = None
    for impl, make, chunks, sync, n_threads in cases:
        first = chunks[0]
        kind = (
            f"torch {first.device.type} float32"
            if isinstance(first, torch.Tensor)
            else "numpy float32"
        )
        make().partial_fit(first).transform(first)  # warm-up: imports, JIT cache load
        _set_threads(n_threads)
        try:
            t_fit, t_tr = _time_passes(make, chunks, reps, sync)
        finally:
            _set_threads(threads)
        total = t_fit + t_tr
        base_total = base_total or total
        row: dict[str, Any] = {
            "op": "StandardScaler partial_fit+transform",
            "impl": impl,
            "input": kind,
            "threads": n_threads,
            "shape": f"{n_rows:.0e} x {FEATURES}, chunks of {CHUNK:.0e}",
            "fit ms": t_fit * 1e3,
            "transform ms": t_tr * 1e3,
            "total ms": total * 1e3,
            "speedup": base_total / total,
        }
        sc = make()
        for c in chunks:
            sc.partial_fit(c)
        row.update(_compare(sc, ref, chunks, pool))
        rows.append(row)
    return rows


register_suite(
    "data",
    run_data_bench,
    "streaming StandardScaler (partial_fit + transform, 1e7 x 32 float32) vs scikit-learn",
)
