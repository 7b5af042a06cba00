"""Where normkit's compiled Numba kernels live on disk, and the ``njit`` that puts them there.

Kernels compile on first use per dtype (seconds) and are cached on disk: ``NUMBA_CACHE_DIR`` if
set, else ``$XDG_CACHE_HOME/normkit/numba`` (``~/.cache/...``). The directory is chosen per
function when :func:`njit` decorates it (numba fixes a function's cache path then), so neither
the environment nor numba's configuration is changed for other numba users in the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "njit"]


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``NUMBA_CACHE_DIR`` or the user cache dir."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normkit" / "numba"


def njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)`` whose on-disk cache (with ``cache=True``) is :func:`cache_dir`.

    numba reads ``numba.config.CACHE_DIR`` once, when it sets up a function's cache; it is set
    for that moment only (unless the user configured one) and restored right after.
    """
    import numba

    def decorate(fn: Callable[..., Any]) -> Any:
        before = numba.config.CACHE_DIR
        if not before:
            numba.config.CACHE_DIR = str(cache_dir())
        try:
            return numba.njit(**options)(fn)
        finally:
            numba.config.CACHE_DIR = before

    return decorate
