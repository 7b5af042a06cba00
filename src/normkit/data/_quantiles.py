"""Quantiles by numpy's ``linear`` method from sorted columns, shared by the dense and the
sparse paths of the quantile-based scalers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from normkit._stats import accumulation_dtype

__all__ = ["interpolated_quantiles"]

_F64 = torch.float64


def interpolated_quantiles(
    pick: Callable[[Tensor], Tensor], n: Tensor, dtype: torch.dtype, qs: Sequence[float | Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """Per-column median and quantiles ``qs`` of sorted columns, as numpy's ``nanmedian`` /
    ``nanpercentile`` (default ``linear`` method).

    ``pick(k)`` returns the ``k[j]``-th smallest valid value of every column ``j``; ``n`` holds
    each column's number of valid values (float64). The quantile ``q`` sits at ``(n − 1)·q`` and
    is interpolated in float64 between its neighbours with numpy's two-sided lerp; the median
    is the mean of the two middle values in ``dtype`` (numpy's ``median``; float16 values are
    averaged in float32, as numpy does). A column without valid values gives NaN.
    """
    none = n == 0

    def neighbours(q: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos = (n - 1).clamp_min(0) * q
        lo = pos.floor()
        return pick(lo.to(torch.int64)), pick(pos.ceil().to(torch.int64)), pos - lo

    a, b, _ = neighbours(0.5)
    acc = accumulation_dtype(dtype)
    mid = ((a.to(acc) + b.to(acc)) / 2).to(dtype)
    median = torch.where(none, float("nan"), mid)
    out = []
    for q in qs:
        a, b, t = neighbours(q)
        a, b = a.to(_F64), b.to(_F64)
        d = b - a
        v = torch.where(t >= 0.5, b - d * (1 - t), a + d * t)
        out.append(torch.where(none, float("nan"), v))
    return median, out
