"""Layer norm and RMS norm kernels over rows ``(M, N)`` (the fused residual add included)."""

from __future__ import annotations

import numpy as np
from numba import prange

from normkit.backends.numba._cache import njit
from normkit.backends.numba.kernels import PARALLEL


@njit(**PARALLEL)
def ln_fwd(x, r, add, w, b, eps, y, s_out, mean, rstd):  # pragma: no cover - jitted
    """Rows LayerNorm of ``x`` (or of ``x + r`` written to ``s_out`` when ``add``)."""
    m_rows, n = x.shape
    for i in prange(m_rows):
        acc = 0.0
        if add:
            for j in range(n):
                v = x[i, j] + r[i, j]
                s_out[i, j] = v
                acc += v
            src = s_out
        else:
            for j in range(n):
                acc += x[i, j]
            src = x
        mu = acc / n
        q = 0.0
        for j in range(n):
            d = src[i, j] - mu
            q += d * d
        mean[i] = mu
        rstd[i] = 1.0 / np.sqrt(q / n + eps)
        mf = mean[i]
        rf = rstd[i]
        for j in range(n):
            y[i, j] = (src[i, j] - mf) * rf * w[j] + b[j]


@njit(**PARALLEL)
def rms_fwd(x, r, add, w, eps, y, s_out, rstd):  # pragma: no cover - jitted
    """Rows RMSNorm of ``x`` (or of ``x + r`` written to ``s_out`` when ``add``)."""
    m_rows, n = x.shape
    for i in prange(m_rows):
        q = 0.0
        if add:
            for j in range(n):
                v = x[i, j] + r[i, j]
                s_out[i, j] = v
                q += v * v
            src = s_out
        else:
            for j in range(n):
                v = x[i, j]
                q += v * v
            src = x
        rstd[i] = 1.0 / np.sqrt(q / n + eps)
        rf = rstd[i]
        for j in range(n):
            y[i, j] = src[i, j] * rf * w[j]


@njit(**PARALLEL)
def ln_bwd(dy, x, w, mean, rstd, centered, has_ds, ds, dx, dwp, dbp):  # pragma: no cover
    """Rows LayerNorm (``centered``) or RMSNorm backward; ``dwp``/``dbp`` are (P, N) partials
    (zeroed here, in the input dtype: P·N float32 partials stay in cache).

    dx = r·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w, x̂ = (x − μ)·r (μ = 0, no mean(g) term for
    RMS); plus ``ds`` (the gradient of the fused sum) when ``has_ds``.
    """
    m_rows, n = x.shape
    chunks = dwp.shape[0]
    for c in prange(chunks):
        lo = c * m_rows // chunks
        hi = (c + 1) * m_rows // chunks
        k = np.empty(3, dx.dtype)
        for j in range(n):
            dwp[c, j] = 0.0
            dbp[c, j] = 0.0
        for i in range(lo, hi):
            mu = mean[i] if centered else 0.0
            r = rstd[i]
            s1 = 0.0
            s2 = 0.0
            for j in range(n):
                g = dy[i, j] * w[j]
                s1 += g
                s2 += g * (x[i, j] - mu)
            k[0] = mu
            k[1] = r * s1 / n if centered else 0.0
            k[2] = r * r * r * s2 / n
            muf = k[0]
            k1 = k[1]
            k2 = k[2]
            rf = rstd[i]
            for j in range(n):
                g = dy[i, j]
                xm = x[i, j] - muf
                v = rf * g * w[j] - k1 - xm * k2
                if has_ds:
                    v += ds[i, j]
                dx[i, j] = v
                dwp[c, j] += g * xm * rf
                dbp[c, j] += g
