"""Numba kernels of the transformer norms: preset RMSNorm, DyT, modulate (imported with numba).

**Preset RMSNorm** (:func:`rms_cast_fwd`) reproduces the bits of the Hugging Face compositions
``x · rsqrt(mean(x²) + ε) · w`` in float32/float64: the sum of squares runs in the order of
torch's CPU sum (``aten/src/ATen/native/cpu/SumKernel.cpp``: rows read as vectors of ``lanes``
elements, four interleaved accumulators, a cascade of four levels flushing every
``2^max(4, ⌈log₂ items⌉/4)`` items, the scalar tail, then the lanes in order), every product and
sum rounded in the input dtype, no fused multiply-add. These kernels therefore run without
``fastmath``. ``lanes`` is measured against torch at first use (:mod:`._numba_transformer`).

The other kernels (DyT, modulate) accumulate in float64 and allow ``fastmath`` reassociation
(not ``nnan``/``ninf``: NaN and Inf propagate as in torch).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FM = {"reassoc", "contract", "nsz", "arcp"}
_PAR = {"parallel": True, "fastmath": _FM, "cache": True, "nogil": True}
# Bit-exact kernels: no fastmath, so LLVM keeps torch's order and rounds every product.
_EXACT = {"parallel": True, "cache": True, "nogil": True}
_EXACT_SERIAL = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------- preset RMSNorm


@njit(**_EXACT_SERIAL)
def _add_sq(x, i, base, lanes, acc, k):  # pragma: no cover - jitted
    for lane in range(lanes):
        v = x[i, base + lane]
        acc[k, lane] += v * v


@njit(**_EXACT_SERIAL)
def torch_order_sumsq(x, i, lanes, items, acc, lev):  # pragma: no cover - jitted
    """Σ_j x[i, j]² over the first ``items·lanes`` elements in torch's ``row_sum`` order.

    ``acc`` (4, lanes) and ``lev`` (4, 4, lanes) are scratch; the per-lane partial sums are left
    in ``acc[0]`` (``lanes = 1``: the scalar path, the sum is ``acc[0, 0]``).
    """
    acc[:] = 0
    lev[:] = 0
    size_ilp = items // 4
    ceil_log2 = 1
    while (1 << ceil_log2) < size_ilp:
        ceil_log2 += 1
    power = max(4, ceil_log2 // 4)
    step = 1 << power
    mask = step - 1
    t = 0
    while t + step <= size_ilp:
        for _ in range(step):
            for k in range(4):
                _add_sq(x, i, (4 * t + k) * lanes, lanes, acc, k)
            t += 1
        # carry level 0 (acc) into level 1, and up while the counter is a multiple
        for k in range(4):
            for lane in range(lanes):
                lev[1, k, lane] += acc[k, lane]
                acc[k, lane] = 0
        for j in range(2, 4):
            if (t & (mask << ((j - 1) * power))) != 0:
                break
            for k in range(4):
                for lane in range(lanes):
                    lev[j, k, lane] += lev[j - 1, k, lane]
                    lev[j - 1, k, lane] = 0
    while t < size_ilp:
        for k in range(4):
            _add_sq(x, i, (4 * t + k) * lanes, lanes, acc, k)
        t += 1
    for j in range(1, 4):
        for k in range(4):
            for lane in range(lanes):
                acc[k, lane] += lev[j, k, lane]
    for t in range(size_ilp * 4, items):
        _add_sq(x, i, t * lanes, lanes, acc, 0)
    for k in range(1, 4):
        for lane in range(lanes):
            acc[0, lane] += acc[k, lane]


@njit(**_EXACT_SERIAL)
def _row_sumsq(x, i, n, lanes, acc, lev, zero):  # pragma: no cover - jitted
    """torch's ``x.pow(2).sum(-1)`` of row ``i`` (vectorised inner sum, or the scalar one)."""
    if n < lanes:
        torch_order_sumsq(x, i, 1, n, acc, lev)
        return acc[0, 0]
    items = n // lanes
    torch_order_sumsq(x, i, lanes, items, acc, lev)
    total = zero
    for j in range(items * lanes, n):
        v = x[i, j]
        total += v * v
    for lane in range(lanes):
        total += acc[0, lane]
    return total


@njit(**_EXACT)
def sumsq_rows(x, lanes, out):  # pragma: no cover - jitted
    """``out[i] = Σ_j x[i, j]²`` in torch's order (used to measure ``lanes``)."""
    m, n = x.shape
    zero = np.zeros(1, x.dtype)
    for i in prange(m):
        acc = np.empty((4, max(lanes, 1)), x.dtype)
        lev = np.empty((4, 4, max(lanes, 1)), x.dtype)
        out[i] = _row_sumsq(x, i, n, lanes, acc, lev, zero[0])


@njit(**_EXACT)
def rms_cast_fwd(x, w, k, lanes, chunks, y, rstd):  # pragma: no cover - jitted
    """Preset RMSNorm rows: ``r = 1/√(Σx²/n + ε)``, ``y = (x·r)·w`` rounded like torch.

    ``k = [1, ε, n]`` in the input dtype (so that every operation stays in that dtype), ``w``
    the scale (``offset + weight``, formed by the caller as the preset does).
    """
    m, n = x.shape
    one = k[0]
    eps = k[1]
    nf = k[2]
    for c in prange(chunks):
        lo = c * m // chunks
        hi = (c + 1) * m // chunks
        acc = np.empty((4, max(lanes, 1)), x.dtype)
        lev = np.empty((4, 4, max(lanes, 1)), x.dtype)
        for i in range(lo, hi):
            s = _row_sumsq(x, i, n, lanes, acc, lev, k[0] - k[0])
            r = one / np.sqrt(s / nf + eps)
            rstd[i] = r
            for j in range(n):
                y[i, j] = (x[i, j] * r) * w[j]
