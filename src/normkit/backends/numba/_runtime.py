"""How the numba backend's kernels run: loaded on first use, on torch's thread budget, split into
chunks per thread.

numba itself is imported by the first kernel call (:func:`kernels`), not when normkit is: the
op modules, their custom ops and fake implementations need only torch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from types import ModuleType

import torch

__all__ = ["SERIAL_NUMEL", "chunks", "kernels", "threads"]

#: Inputs smaller than this run the kernels on one thread: no wake-up of the worker pool, no
#: barrier (which on a busy machine waits for a descheduled worker).
SERIAL_NUMEL = 1 << 15


@functools.cache
def kernels(family: str) -> ModuleType:
    """:mod:`normkit.backends.numba.kernels.<family>` (imports numba; each kernel then compiles
    or loads from the disk cache on its first call)."""
    return importlib.import_module(f"normkit.backends.numba.kernels.{family}")


@functools.cache
def _numba() -> ModuleType:
    import numba

    return numba


def chunks(rows: int) -> int:
    """How many row chunks a kernel with per-chunk partials splits ``rows`` into."""
    return max(1, min(rows, 4 * _numba().get_num_threads()))


@contextlib.contextmanager
def threads(numel: int) -> Iterator[None]:
    """Run a kernel on torch's thread budget: one thread for small inputs, else
    ``torch.get_num_threads()`` (capped by numba's pool).

    numba's OpenMP layer shares its runtime with torch, so a launch with numba's own count would
    silently change ``torch.get_num_threads()`` for the rest of the process (a user's
    ``torch.set_num_threads(1)`` in data-loader workers or parallel jobs would be undone); torch's
    count is restored if the launch moved it.
    """
    numba = _numba()
    torch_n = torch.get_num_threads()
    n = 1 if numel < SERIAL_NUMEL else max(1, min(torch_n, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_n:
            torch.set_num_threads(torch_n)
