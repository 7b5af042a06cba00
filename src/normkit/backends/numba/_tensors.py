"""Tensor helpers of the numba backend: NumPy views, layouts, small vectors (torch only, no numba).

The kernels take NumPy arrays; :func:`nd` gives a view of a CPU tensor without a copy, the
other helpers bring weights, outputs and gradients into the layout the kernels stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_layout_of", "column_sum", "is_channels_last", "nd", "numel", "rows", "vector"]


def nd(t: Tensor) -> Any:
    """A NumPy view of a CPU tensor (no copy; the tensor must be dense in its layout)."""
    return t.detach().numpy()


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a non-contiguous 4-D/5-D tensor dense in channels_last(_3d) order."""
    if x.is_contiguous():
        return False
    if x.ndim == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def as_layout_of(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` densely laid out like ``ref`` (contiguous or channels_last), copying only if needed."""
    if is_channels_last(ref):
        fmt = torch.channels_last if ref.ndim == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    return t.contiguous()


def vector(t: Tensor | None, n: int, fill: float, dtype: torch.dtype) -> Tensor:
    """``t`` flattened to a contiguous (n,) vector in ``dtype``, or a constant vector."""
    if t is None:
        return torch.full((n,), fill, dtype=dtype)
    return t.reshape(-1).to(dtype).contiguous()


def column_sum(parts: Tensor) -> Tensor:
    """Column sums of small (P, N) partials with NumPy in float64, returned in their dtype."""
    a = nd(parts)
    return torch.from_numpy(a.sum(0, dtype=np.float64).astype(a.dtype))


def rows(x: Tensor, n: int) -> Tensor:
    """``x`` as contiguous rows of ``n`` elements."""
    return x.contiguous().reshape(-1, n)


def numel(shape: Sequence[int]) -> int:
    """The number of elements of ``shape``."""
    n = 1
    for s in shape:  # a plain loop: torch.compile traces it without a graph break
        n *= int(s)
    return n
