"""Numba kernels of the transformer norms: preset RMSNorm, DyT, modulate (imported with numba).

**Preset RMSNorm** (:func:`rms_cast_fwd`) reproduces the bits of the Hugging Face compositions
``x · rsqrt(mean(x²) + ε) · w`` in float32/float64: the sum of squares runs in the order of
torch's CPU sum (``aten/src/ATen/native/cpu/SumKernel.cpp``: rows read as vectors of ``lanes``
elements, four interleaved accumulators, a cascade of four levels flushing every
``2^max(4, ⌈log₂ items⌉/4)`` items, the scalar tail, then the lanes in order), every product and
sum rounded in the input dtype, no fused multiply-add. These kernels therefore run without
``fastmath``. ``lanes`` is measured against torch at first use
(:mod:`normkit.backends.numba.transformer`).

The other kernels (DyT, modulate) accumulate in float64 and allow ``fastmath`` reassociation
(not ``nnan``/``ninf``: NaN and Inf propagate as in torch).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from normkit.backends.numba._cache import njit
from normkit.backends.numba.kernels import FASTMATH, PARALLEL

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


# --------------------------------------------------------------------------- DyT


@njit(fastmath=FASTMATH, cache=True, nogil=True, inline="always")
def tanh32(z):  # pragma: no cover - jitted
    """tanh for float32 as a rational function (Eigen's ``generic_fast_tanh_float``): plain
    arithmetic, so the loops around it vectorise (NumPy's ``tanh`` is a scalar libm call).
    Within a few float32 ulps of ``torch.tanh``; saturates to ±1 past |z| ≈ 7.9."""
    c = np.float32(7.90531110763549805)
    x = min(max(z, -c), c)
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    t = x * p / q
    # tiny |z|: tanh z = z; NaN fails the comparison and is returned as is (the clamp lost it)
    return t if abs(z) >= np.float32(0.0004) else z


@njit(**PARALLEL)
def dyt_fwd(x, a, w, b, fast, y):  # pragma: no cover - jitted
    """Rows DyT: ``y = w·tanh(a·x) + b`` (``fast``: float32 rational tanh, else libm)."""
    m, n = x.shape
    alpha = a[0]
    for i in prange(m):
        if fast:
            for j in range(n):
                y[i, j] = w[j] * tanh32(alpha * x[i, j]) + b[j]
        else:
            for j in range(n):
                y[i, j] = w[j] * np.tanh(alpha * x[i, j]) + b[j]


@njit(**PARALLEL)
def dyt_bwd(dy, x, a, w, fast, dx, dwp, dbp, dap):  # pragma: no cover - jitted
    """DyT backward over row chunks, tanh recomputed: with ``t = tanh(a·x)``, ``s = 1 − t²``,
    ``dx = dy·w·a·s``, ``da = Σ dy·w·x·s``, ``dw = Σ_rows dy·t``, ``db = Σ_rows dy``; the
    (P, N) partials ``dwp``/``dbp`` and (P,) ``dap`` are zeroed here and summed by the caller."""
    m, n = x.shape
    chunks = dwp.shape[0]
    alpha = a[0]
    for c in prange(chunks):
        lo = c * m // chunks
        hi = (c + 1) * m // chunks
        for j in range(n):
            dwp[c, j] = 0.0
            dbp[c, j] = 0.0
        da = 0.0
        for i in range(lo, hi):
            for j in range(n):
                v = x[i, j]
                t = tanh32(alpha * v) if fast else np.tanh(alpha * v)
                g = dy[i, j]
                gs = g * w[j] * (1 - t * t)
                dx[i, j] = gs * alpha
                da += gs * v
                dwp[c, j] += g * t
                dbp[c, j] += g
        dap[c] = da


# --------------------------------------------------------------------------- modulate


@njit(**PARALLEL)
def mod_fwd(x, norm, p, sh, g, eps, y, mean, rstd):  # pragma: no cover - jitted
    """``y = (x̂·p + sh)·g`` per row of x (S, L, C) with sample s's rows ``p[s]`` (= 1 + scale),
    ``sh[s]``, ``g[s]``; ``x̂`` the layer norm (``norm`` 1), RMS norm (2) or x (0) of the row."""
    s_n, l_n, n = x.shape
    for r in prange(s_n * l_n):
        s = r // l_n
        i = r % l_n
        mu = 0.0
        if norm == 1:
            acc = 0.0
            for j in range(n):
                acc += x[s, i, j]
            mu = acc / n
        q = 0.0
        if norm != 0:
            for j in range(n):
                d = x[s, i, j] - mu
                q += d * d
        mean[r] = mu
        rstd[r] = 1.0 / np.sqrt(q / n + eps) if norm != 0 else 1.0
        mf = mean[r]
        rf = rstd[r]
        for j in range(n):
            y[s, i, j] = ((x[s, i, j] - mf) * rf * p[s, j] + sh[s, j]) * g[s, j]


@njit(**PARALLEL)
def mod_bwd(dy, x, norm, p, sh, g, mean, rstd, lo, hi, slot, dx, dp, dsh, dg):  # pragma: no cover
    """Backward of :func:`mod_fwd` over chunks of rows ``[lo[c], hi[c])`` of the flattened
    (S·L) rows, chunk c adding its per-sample sums into slot ``slot[c]`` of the (P, S, C)
    ``dp`` (grad of scale), ``dsh``, ``dg`` (zeroed by the caller). With ``u = x̂·p + sh``,
    ``du = dy·g``: ``dg = Σ dy·u``, ``dsh = Σ du``, ``dp = Σ du·x̂``, ``dx̂ = du·p`` and
    ``dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))`` (no mean(dx̂) term for RMS, ``dx = dx̂``
    without a norm)."""
    l_n, n = x.shape[1], x.shape[2]
    for c in prange(lo.shape[0]):
        k = slot[c]
        for r in range(lo[c], hi[c]):
            s = r // l_n
            i = r % l_n
            mu = mean[r]
            rf = rstd[r]
            s1 = 0.0
            s2 = 0.0
            for j in range(n):
                xh = (x[s, i, j] - mu) * rf
                gd = dy[s, i, j]
                du = gd * g[s, j]
                dg[k, s, j] += gd * (xh * p[s, j] + sh[s, j])
                dsh[k, s, j] += du
                dp[k, s, j] += du * xh
                dxh = du * p[s, j]
                s1 += dxh
                s2 += dxh * xh
            m1 = s1 / n if norm == 1 else 0.0
            m2 = s2 / n if norm != 0 else 0.0
            for j in range(n):
                xh = (x[s, i, j] - mu) * rf
                dxh = dy[s, i, j] * g[s, j] * p[s, j]
                dx[s, i, j] = rf * (dxh - m1 - xh * m2) if norm != 0 else dxh
