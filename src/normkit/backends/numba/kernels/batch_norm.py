"""Batch norm kernels: channel in the middle ``(A, C, B)`` and channels-last rows ``(M, C)``."""

from __future__ import annotations

import numpy as np
from numba import prange

from normkit.backends.numba._cache import njit
from normkit.backends.numba.kernels import PARALLEL, ROW_BLOCK

# --------------------------------------------------------------------------- batch norm, (A, C, B)


@njit(**PARALLEL)
def bn_fwd_acb(x, w, b, eps, y, mean, var, rstd):  # pragma: no cover - jitted
    """Training BatchNorm, channel in the middle: per channel, Chan-merged (A) slices of B."""
    a_n, c_n, b_n = x.shape
    for c in prange(c_n):
        n_tot = 0.0
        mu_tot = 0.0
        m2_tot = 0.0
        for a in range(a_n):
            s = 0.0
            for k in range(b_n):
                s += x[a, c, k]
            mu = s / b_n
            q = 0.0
            for k in range(b_n):
                d = x[a, c, k] - mu
                q += d * d
            n_new = n_tot + b_n
            delta = mu - mu_tot
            mu_tot += delta * b_n / n_new
            m2_tot += q + delta * delta * n_tot * b_n / n_new
            n_tot = n_new
        v = m2_tot / n_tot
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu_tot
        var[c] = v
        rstd[c] = r
        muf = mean[c]
        kk = np.empty(1, y.dtype)
        kk[0] = w[c] * r
        sc = kk[0]
        bc = b[c]
        for a in range(a_n):
            for k in range(b_n):
                y[a, c, k] = (x[a, c, k] - muf) * sc + bc


@njit(**PARALLEL)
def bn_bwd_acb(dy, x, w, mean, rstd, dx, dw, db):  # pragma: no cover - jitted
    """Training BatchNorm backward, channel in the middle, one fused pass pair per channel."""
    a_n, c_n, b_n = x.shape
    cnt = a_n * b_n
    for c in prange(c_n):
        mu = mean[c]
        r = rstd[c]
        s1 = 0.0
        s2 = 0.0
        for a in range(a_n):
            for k in range(b_n):
                g = dy[a, c, k]
                s1 += g
                s2 += g * (x[a, c, k] - mu)
        db[c] = s1
        dw[c] = s2 * r
        kk = np.empty(3, dx.dtype)
        kk[0] = w[c] * r
        kk[1] = w[c] * r * r * r * s2 / cnt
        kk[2] = w[c] * r * s1 / cnt
        k1 = kk[0]
        k2 = kk[1]
        k3 = kk[2]
        for a in range(a_n):
            for k in range(b_n):
                dx[a, c, k] = k1 * dy[a, c, k] - (x[a, c, k] - mu) * k2 - k3


@njit(**PARALLEL)
def affine_acb(x, mu, sc, b, y):  # pragma: no cover - jitted
    """y = (x − μ_c)·sc_c + b_c for (A, C, B) (batch norm eval, channel in the middle)."""
    a_n, c_n, b_n = x.shape
    for t in prange(a_n * c_n):
        a = t // c_n
        c = t % c_n
        m = mu[c]
        s = sc[c]
        o = b[c]
        for k in range(b_n):
            y[a, c, k] = (x[a, c, k] - m) * s + o


# --------------------------------------------------------------------------- batch norm, (M, C) rows


@njit(**PARALLEL)
def bn_stats_rows(x, cnt, mu_p, m2_p):  # pragma: no cover - jitted
    """Per-chunk moments of channels-last (M, C) data: blocks of rows merged by Chan's rule."""
    m_rows, c_n = x.shape
    chunks = mu_p.shape[0]
    for p in prange(chunks):
        lo = p * m_rows // chunks
        hi = (p + 1) * m_rows // chunks
        bs = np.empty(c_n)
        bq = np.empty(c_n)
        n_acc = 0.0
        for c in range(c_n):
            mu_p[p, c] = 0.0
            m2_p[p, c] = 0.0
        for start in range(lo, hi, ROW_BLOCK):
            end = min(start + ROW_BLOCK, hi)
            nb = end - start
            for c in range(c_n):
                bs[c] = 0.0
                bq[c] = 0.0
            for i in range(start, end):
                for c in range(c_n):
                    bs[c] += x[i, c]
            for c in range(c_n):
                bs[c] /= nb
            for i in range(start, end):
                for c in range(c_n):
                    d = x[i, c] - bs[c]
                    bq[c] += d * d
            n_new = n_acc + nb
            for c in range(c_n):
                delta = bs[c] - mu_p[p, c]
                mu_p[p, c] += delta * nb / n_new
                m2_p[p, c] += bq[c] + delta * delta * n_acc * nb / n_new
            n_acc = n_new
        cnt[p] = n_acc


@njit(**PARALLEL)
def affine_rows(x, mu, sc, b, y):  # pragma: no cover - jitted
    """y = (x − μ_c)·sc_c + b_c for channels-last (M, C) rows."""
    m_rows, c_n = x.shape
    for i in prange(m_rows):
        for c in range(c_n):
            y[i, c] = (x[i, c] - mu[c]) * sc[c] + b[c]


@njit(**PARALLEL)
def bn_bwd_sums_rows(dy, x, mu, s1p, s2p):  # pragma: no cover - jitted
    """Per-chunk Σdy and Σdy·(x − μ) per channel of (M, C) rows (float64 partials)."""
    m_rows, c_n = x.shape
    chunks = s1p.shape[0]
    for p in prange(chunks):
        lo = p * m_rows // chunks
        hi = (p + 1) * m_rows // chunks
        for c in range(c_n):
            s1p[p, c] = 0.0
            s2p[p, c] = 0.0
        for i in range(lo, hi):
            for c in range(c_n):
                g = dy[i, c]
                s1p[p, c] += g
                s2p[p, c] += g * (x[i, c] - mu[c])


@njit(**PARALLEL)
def bwd_apply_rows(dy, x, mu, k1, k2, k3, dx):  # pragma: no cover - jitted
    """dx = k1_c·dy − (x − μ_c)·k2_c − k3_c for channels-last (M, C) rows."""
    m_rows, c_n = x.shape
    for i in prange(m_rows):
        for c in range(c_n):
            dx[i, c] = k1[c] * dy[i, c] - (x[i, c] - mu[c]) * k2[c] - k3[c]
