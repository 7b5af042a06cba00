"""Moments, their merge, and the running-statistics update — the "stats" and "combine" pieces.

Every norm in normkit is *compute moments over some axes → optionally combine partial moments
(micro-batches, processes) → apply an affine map*. This module owns the first two pieces and the
running-average update; it holds no state. Functions return new values; callers assign them.

Numerics: moments are accumulated in float32 for float16/bfloat16/float32 inputs and in float64
for float64 inputs, with a two-pass algorithm (mean first, then the mean of squared deviations),
never the naive ``E[x²] − E[x]²`` that cancels catastrophically when ``|mean| ≫ std``.
Partial moments are merged with Chan et al.'s pairwise formula (Chan, Golub & LeVeque 1979).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Moments",
    "MomentumConvention",
    "NanPolicy",
    "accumulation_dtype",
    "bessel_correction",
    "merge_moments",
    "merge_stacked",
    "moments",
    "running_average_factor",
    "update_running_stats",
]

MomentumConvention = Literal["torch", "keras"]
NanPolicy = Literal["skip", "raise", "propagate"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float64 for float64, float32 for everything else.

    >>> accumulation_dtype(torch.bfloat16)
    torch.float32
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Moments:
    """Partial first and second moments of a set of values, mergeable exactly.

    ``count`` values with mean ``mean`` and sum of squared deviations ``m2`` (so the biased
    variance is ``m2 / count``). ``count`` may be a tensor broadcastable to ``mean`` (masked or
    unequal groups) or a plain number.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    @property
    def var(self) -> Tensor:
        """Biased (population) variance ``m2 / count``; 0 where ``count == 0``."""
        return self.m2 / _divisor(self.count)

    @property
    def unbiased_var(self) -> Tensor:
        """Sample variance ``m2 / (count − 1)``; ``nan`` where ``count ≤ 1`` (as torch does)."""
        return self.m2 / (self.count - 1)

    @staticmethod
    def of(x: Tensor, dims: Sequence[int], *, mask: Tensor | None = None) -> Moments:
        """Moments of ``x`` over ``dims`` (kept as size-1 dims), optionally over ``mask`` only."""
        mean, var, count = moments(x, dims, keepdim=True, mask=mask, return_count=True)
        return Moments(count, mean, var * count)


def moments(
    x: Tensor,
    dims: Sequence[int],
    *,
    keepdim: bool = False,
    mask: Tensor | None = None,
    return_count: bool = False,
) -> tuple[Tensor, ...]:
    """Mean and biased variance of ``x`` over ``dims`` by two passes in the accumulation dtype.

    .. math:: \\mu = \\frac1n\\sum_i x_i, \\qquad \\sigma^2 = \\frac1n\\sum_i (x_i-\\mu)^2

    ``mask`` (bool, broadcastable to ``x``) keeps only the ``True`` positions; a group with no
    kept value gets mean 0 and variance 0. Returns ``(mean, var)`` or ``(mean, var, count)``.
    Differentiable; the result dtype is :func:`accumulation_dtype` of ``x``.

    >>> x = torch.randn(8, 3) + 1e4
    >>> mean, var = moments(x, [0])
    """
    dims = tuple(d % x.ndim for d in dims) if x.ndim else ()
    xa = x.to(accumulation_dtype(x.dtype))
    if mask is None:
        n = 1
        for d in dims:
            n *= x.shape[d]
        mean = xa.mean(dim=dims, keepdim=True)
        var = (xa - mean).square().mean(dim=dims, keepdim=True)
        count = torch.full_like(mean, float(n))
    else:
        keep = mask.to(device=xa.device, dtype=torch.bool).expand_as(xa)
        zero = xa.new_zeros(())
        count = keep.sum(dim=dims, keepdim=True).to(xa.dtype)
        safe = count.clamp_min(1)
        # where, not a product with the mask: NaN/Inf padding must not leak into the moments
        # (nor into their gradients, hence the zero-filled copy before squaring)
        xs = torch.where(keep, xa, zero)
        mean = xs.sum(dim=dims, keepdim=True) / safe
        var = torch.where(keep, (xs - mean).square(), zero).sum(dim=dims, keepdim=True) / safe
    if not keepdim:
        mean, var, count = (t.squeeze(dims) if dims else t for t in (mean, var, count))
    return (mean, var, count) if return_count else (mean, var)


def _divisor(count: Tensor) -> Tensor:
    """``count`` where positive, 1 where 0: the divisor of a mean over ``count`` values. Counts
    are sums of sample weights, so they may lie in (0, 1), where ``clamp_min(1)`` would be wrong.
    """
    return torch.where(count > 0, count, 1)


def merge_moments(parts: Sequence[Moments]) -> Moments:
    """Merge partial moments exactly (Chan, Golub & LeVeque 1979, pairwise update).

    .. math::
        n = n_a + n_b,\\quad \\delta = \\mu_b - \\mu_a,\\quad
        \\mu = \\mu_a + \\delta\\, n_b / n,\\quad M_2 = M_{2,a} + M_{2,b} + \\delta^2 n_a n_b / n

    Groups with ``count == 0`` are neutral. The result equals the moments of the concatenated data.
    :func:`merge_stacked` merges many parts of one shape in one step.

    >>> a, b = torch.randn(5, 2), torch.randn(7, 2)
    >>> m = merge_moments([Moments.of(a, [0]), Moments.of(b, [0])])
    """
    if not parts:
        raise ValueError("merge_moments needs at least one Moments (got an empty sequence)")
    acc = parts[0]
    for p in parts[1:]:
        n = acc.count + p.count
        safe = _divisor(torch.as_tensor(n))
        delta = p.mean - acc.mean
        mean = acc.mean + delta * (p.count / safe)
        m2 = acc.m2 + p.m2 + delta.square() * (acc.count * p.count / safe)
        acc = Moments(n, mean, m2)
    return acc


def merge_stacked(parts: Moments) -> Moments:
    """Merge the moments stacked along dim 0 of ``parts`` in one step (the k-way form of Chan et
    al. 1979):

    .. math::
        n = \\sum_i n_i,\\quad \\mu = \\frac1n \\sum_i n_i \\mu_i,\\quad
        M_2 = \\sum_i M_{2,i} + \\sum_i n_i (\\mu_i - \\mu)^2

    ``count``, ``mean`` and ``m2`` share their shape ``(k, ...)``. Parts with ``count == 0`` are
    neutral (a feature no part saw keeps the first part's mean, M2 0); counts may be fractional
    (sample weights). A handful of ops for any ``k``.

    >>> x = torch.randn(3, 10, 2, dtype=torch.float64)   # 3 chunks of 10 rows
    >>> m = merge_stacked(Moments(torch.full((3, 2), 10.0, dtype=torch.float64),
    ...                           x.mean(1), x.var(1, correction=0) * 10))
    >>> bool(torch.allclose(m.m2 / m.count, x.reshape(30, 2).var(0, correction=0)))
    True
    """
    n = parts.count.sum(0)
    # the mean as an offset from the largest part's (exact when the parts agree, e.g. a constant
    # feature, and free of the cancellation a plain weighted sum of large means suffers)
    ref = parts.mean.gather(0, parts.count.argmax(0, keepdim=True)).squeeze(0)
    delta = parts.mean - ref
    mean = ref + (parts.count * delta).sum(0) / _divisor(n)
    m2 = parts.m2.sum(0) + (parts.count * (parts.mean - mean).square()).sum(0)
    return Moments(n, mean, m2)


def bessel_correction(var: Tensor, n: int | Tensor) -> Tensor:
    """Unbiased variance ``var · n/(n−1)`` from the biased one, as torch.nn stores running_var.

    For ``n == 1`` the correction is undefined; torch refuses such batches in training, and so does
    normkit before reaching here. A tensor ``n`` (masked counts) uses ``n/(n−1)`` where ``n > 1``
    and leaves ``var`` as is elsewhere.
    """
    if isinstance(n, Tensor):
        return torch.where(n > 1, var * n / (n - 1).clamp_min(1), var)
    return var * (n / (n - 1)) if n > 1 else var


def running_average_factor(
    momentum: float | None, num_batches_tracked: int | Tensor
) -> float | Tensor:
    """Weight of the new batch in the torch-convention update.

    ``momentum`` as given, or ``1 / num_batches_tracked`` (a cumulative moving average, torch.nn's
    ``momentum=None``) where ``num_batches_tracked`` counts the batch being added.
    """
    if momentum is not None:
        return momentum
    if isinstance(num_batches_tracked, Tensor):
        return 1.0 / num_batches_tracked.clamp_min(1).to(torch.float64)
    return 1.0 / max(int(num_batches_tracked), 1)


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    batch_mean: Tensor,
    batch_var_unbiased: Tensor,
    momentum: float | Tensor,
    *,
    convention: MomentumConvention = "torch",
) -> tuple[Tensor, Tensor]:
    """New running statistics from one batch; a pure function (inputs are not modified).

    torch convention (``torch.nn.BatchNorm*``), ``m`` = weight of the new batch:

    .. math:: r_{new} = (1 - m)\\, r_{old} + m\\, b

    Keras convention (``keras.layers.BatchNormalization``), ``m`` = weight of the old value:

    .. math:: r_{new} = m\\, r_{old} + (1 - m)\\, b

    so ``momentum_keras = 1 − momentum_torch``. ``batch_var_unbiased`` must already carry the
    ``n/(n−1)`` correction (see :func:`bessel_correction`) when following torch.nn; Keras stores
    the biased variance. Results have the dtype of the running buffers.

    >>> rm, rv = update_running_stats(torch.zeros(3), torch.ones(3), torch.ones(3), torch.ones(3), 0.1)
    """
    if convention == "torch":
        w_new = momentum
    elif convention == "keras":
        w_new = 1 - momentum
    else:
        raise ValueError(f"momentum convention must be 'torch' or 'keras' (got {convention!r})")
    if isinstance(w_new, Tensor):
        w_new = w_new.to(running_mean.dtype)
    bm = batch_mean.detach().to(running_mean.dtype)
    bv = batch_var_unbiased.detach().to(running_var.dtype)
    return (1 - w_new) * running_mean + w_new * bm, (1 - w_new) * running_var + w_new * bv
