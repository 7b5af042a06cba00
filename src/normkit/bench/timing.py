"""Timing utilities shared by every suite: median of repetitions, a copy baseline, metrics.

The *copy baseline* is an in-process ``dst.copy_(src)`` moving the same number of bytes as the
op under test (``bytes_moved / 2`` read plus ``bytes_moved / 2`` written, into a preallocated
destination), i.e. the memory-bandwidth limit on this machine right now. Reporting "% of copy"
instead of absolute GB/s makes numbers comparable across a noisy, shared machine.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Timing", "copy_baseline", "measure", "measure_interleaved", "row_metrics"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``reps`` calls after ``warmup`` calls."""

    median: float
    min: float
    reps: int
    first: float

    @property
    def ms(self) -> float:
        return self.median * 1e3


def measure(
    fn: Callable[[], Any],
    *,
    reps: int = 15,
    warmup: int = 3,
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Median wall time of ``fn()`` over ``reps`` calls after ``warmup`` untimed calls.

    ``setup`` (untimed) runs before every call, e.g. to clear ``.grad``. ``first`` is the time
    of the very first call (JIT compile, cache load, lazy init), reported separately.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1 (got {reps})")
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        if setup is not None:
            setup()
        fn()
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(times), min(times), reps, first)


def measure_interleaved(
    calls: Mapping[str, tuple[Callable[[], Any], Callable[[], Any] | None]],
    *,
    reps: int = 15,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Median times of several ``(fn, setup)`` calls measured in alternation.

    Each of the ``reps`` rounds runs every call once, so a change of machine load during the
    measurement affects all of them alike (on a shared machine, timing one implementation's
    whole block after another's can flip a comparison). ``first`` is each call's first run.
    ``clock`` is wall time by default; ``time.thread_time`` (CPU time of the calling thread)
    leaves out the time other processes hold the core, which on an oversubscribed machine
    dominates wall time, but counts only work done on this thread: use it with one intra-op
    thread (``torch.set_num_threads(1)``).
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1 (got {reps})")
    first: dict[str, float] = {}
    for name, (fn, setup) in calls.items():
        for k in range(max(warmup, 1)):
            if setup is not None:
                setup()
            t0 = clock()
            fn()
            if k == 0:
                first[name] = clock() - t0
    times: dict[str, list[float]] = {name: [] for name in calls}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            for name, (fn, setup) in calls.items():
                if setup is not None:
                    setup()
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: Timing(statistics.median(ts), min(ts), reps, first[name])
        for name, ts in times.items()
    }


_COPY_CACHE: dict[int, Timing] = {}


def copy_baseline(bytes_moved: int, *, reps: int = 15, cache: bool = True) -> Timing:
    """Time of an in-process memory copy moving ``bytes_moved`` bytes (half read, half written).

    Source and destination are allocated once, so the copy never page-faults: this is the
    steady-state bandwidth limit an op moving the same bytes could reach.
    """
    if cache and bytes_moved in _COPY_CACHE:
        return _COPY_CACHE[bytes_moved]
    n = max(bytes_moved // 2 // 4, 1)
    src = torch.randn(n)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), reps=reps, warmup=3)
    if cache:
        _COPY_CACHE[bytes_moved] = t
    return t


def row_metrics(
    bytes_moved: int, seconds: float, copy_seconds: float, baseline_seconds: float | None = None
) -> dict[str, float]:
    """``ms``, ``GB/s``, ``% of copy`` and (if a baseline is given) ``speedup`` for one row.

    ``% of copy`` is ``copy time / op time`` (100 = as fast as copying the op's bytes);
    ``speedup`` is ``baseline time / op time`` (> 1 = faster than the baseline).
    """
    row = {
        "ms": seconds * 1e3,
        "GB/s": bytes_moved / seconds / 1e9 if seconds > 0 else float("nan"),
        "% copy": 100.0 * copy_seconds / seconds if seconds > 0 else float("nan"),
    }
    if baseline_seconds is not None:
        row["speedup"] = baseline_seconds / seconds if seconds > 0 else float("nan")
    return row
