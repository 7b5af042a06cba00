"""glibc allocator settings that remove the page-fault cliff of large fresh outputs.

By default glibc serves allocations above its (dynamic, ≤ 32 MiB) mmap threshold with a fresh
``mmap`` and returns them to the OS on free. Every new output tensor of ≥ 32 MiB is then
page-faulted in again, 4 KiB at a time — measured at ~16–20 ms per 64 MiB on this machine,
5–8x the time of copying the same bytes, for torch and numba kernels alike.

Two ways to avoid it, both process-wide and opt-in:

* environment, before Python starts: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184``
  (no mmap for large blocks; freed memory stays in the heap for reuse). Setting
  ``MALLOC_TRIM_THRESHOLD_`` *alone* is worse: it freezes the mmap threshold at 128 KiB.
* at run time: :func:`keep_freed_memory` (``mallopt`` through ctypes, same effect).

The price: the process keeps its peak heap size instead of returning memory to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 34) -> bool:
    """Make glibc keep large freed blocks for reuse instead of ``munmap``-ing them.

    Calls ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, trim_threshold)``.
    Returns ``True`` when both calls succeeded, ``False`` off glibc (macOS, Windows, musl
    without ``mallopt``), where nothing changes.

    >>> from normkit.bench.alloc import keep_freed_memory
    >>> keep_freed_memory()  # doctest: +SKIP
    True
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = min(int(trim_threshold), 2**31 - 1)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
