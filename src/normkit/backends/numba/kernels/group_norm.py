"""Group norm kernels (instance norm is group norm with one channel per group): contiguous
``(N, C, S)`` and channels-last ``(N, S, C)``."""

from __future__ import annotations

import numpy as np
from numba import prange

from normkit.backends.numba._cache import njit
from normkit.backends.numba.kernels import PARALLEL, ROW_BLOCK


@njit(**PARALLEL)
def gn_fwd(x, groups, w, b, eps, y, mean, rstd):  # pragma: no cover - jitted
    """GroupNorm of contiguous (N, C, S): each (sample, group) is one contiguous slice."""
    n_n, c_n, s_n = x.shape
    cg = c_n // groups
    cnt = cg * s_n
    for t in prange(n_n * groups):
        n = t // groups
        g = t % groups
        c0 = g * cg
        acc = 0.0
        for c in range(c0, c0 + cg):
            for k in range(s_n):
                acc += x[n, c, k]
        mu = acc / cnt
        q = 0.0
        for c in range(c0, c0 + cg):
            for k in range(s_n):
                d = x[n, c, k] - mu
                q += d * d
        r = 1.0 / np.sqrt(q / cnt + eps)
        mean[n, g] = mu
        rstd[n, g] = r
        muf = mean[n, g]
        kk = np.empty(1, y.dtype)
        for c in range(c0, c0 + cg):
            kk[0] = w[c] * r
            sc = kk[0]
            bc = b[c]
            for k in range(s_n):
                y[n, c, k] = (x[n, c, k] - muf) * sc + bc


@njit(**PARALLEL)
def gn_bwd(dy, x, groups, w, mean, rstd, dx, dwp, dbp):  # pragma: no cover - jitted
    """GroupNorm backward of contiguous (N, C, S); ``dwp``/``dbp`` are (N, C) float64 partials."""
    n_n, c_n, s_n = x.shape
    cg = c_n // groups
    cnt = cg * s_n
    for t in prange(n_n * groups):
        n = t // groups
        g = t % groups
        c0 = g * cg
        mu = mean[n, g]
        r = rstd[n, g]
        s1 = 0.0
        s2 = 0.0
        for c in range(c0, c0 + cg):
            a1 = 0.0
            a2 = 0.0
            for k in range(s_n):
                v = dy[n, c, k]
                a1 += v
                a2 += v * (x[n, c, k] - mu)
            dbp[n, c] = a1
            dwp[n, c] = a2 * r
            s1 += w[c] * a1
            s2 += w[c] * a2
        kk = np.empty(3, dx.dtype)
        kk[1] = r * r * r * s2 / cnt
        kk[2] = r * s1 / cnt
        k2 = kk[1]
        k3 = kk[2]
        for c in range(c0, c0 + cg):
            kk[0] = r * w[c]
            k1 = kk[0]
            for k in range(s_n):
                dx[n, c, k] = k1 * dy[n, c, k] - (x[n, c, k] - mu) * k2 - k3


@njit(**PARALLEL)
def gn_fwd_cl(x, groups, w, b, eps, y, mean, rstd):  # pragma: no cover - jitted
    """GroupNorm of channels-last (N, S, C): per sample, blocks of rows merged by Chan's rule."""
    n_n, s_n, c_n = x.shape
    cg = c_n // groups
    for n in prange(n_n):
        cs = np.empty(c_n)
        mu_g = np.zeros(groups)
        m2_g = np.zeros(groups)
        bm = np.empty(groups)
        bmc = np.empty(c_n)
        n_acc = 0.0
        for start in range(0, s_n, ROW_BLOCK):
            end = min(start + ROW_BLOCK, s_n)
            nb = (end - start) * cg
            for c in range(c_n):
                cs[c] = 0.0
            for i in range(start, end):
                for c in range(c_n):
                    cs[c] += x[n, i, c]
            for g in range(groups):
                acc = 0.0
                for c in range(g * cg, (g + 1) * cg):
                    acc += cs[c]
                bm[g] = acc / nb
                for c in range(g * cg, (g + 1) * cg):
                    bmc[c] = bm[g]  # per-channel copy: the streaming loop below vectorises
            for c in range(c_n):
                cs[c] = 0.0
            for i in range(start, end):
                for c in range(c_n):
                    d = x[n, i, c] - bmc[c]
                    cs[c] += d * d
            n_new = n_acc + nb
            for g in range(groups):
                q = 0.0
                for c in range(g * cg, (g + 1) * cg):
                    q += cs[c]
                delta = bm[g] - mu_g[g]
                mu_g[g] += delta * nb / n_new
                m2_g[g] += q + delta * delta * n_acc * nb / n_new
            n_acc = n_new
        muc = np.empty(c_n, y.dtype)
        sc = np.empty(c_n, y.dtype)
        for g in range(groups):
            r = 1.0 / np.sqrt(m2_g[g] / n_acc + eps)
            mean[n, g] = mu_g[g]
            rstd[n, g] = r
            for c in range(g * cg, (g + 1) * cg):
                muc[c] = mu_g[g]
                sc[c] = w[c] * r
        for i in range(s_n):
            for c in range(c_n):
                y[n, i, c] = (x[n, i, c] - muc[c]) * sc[c] + b[c]


@njit(**PARALLEL)
def gn_bwd_cl(dy, x, groups, w, mean, rstd, dx, dwp, dbp):  # pragma: no cover - jitted
    """GroupNorm backward of channels-last (N, S, C); (N, C) float64 partials for dw/db."""
    n_n, s_n, c_n = x.shape
    cg = c_n // groups
    cnt = cg * s_n
    for n in prange(n_n):
        muc = np.empty(c_n, x.dtype)
        for c in range(c_n):
            muc[c] = mean[n, c // cg]
        a1 = np.zeros(c_n)
        a2 = np.zeros(c_n)
        for i in range(s_n):
            for c in range(c_n):
                v = dy[n, i, c]
                a1[c] += v
                a2[c] += v * (x[n, i, c] - muc[c])
        k1 = np.empty(c_n, dx.dtype)
        k2 = np.empty(c_n, dx.dtype)
        k3 = np.empty(c_n, dx.dtype)
        for g in range(groups):
            r = rstd[n, g]
            s1 = 0.0
            s2 = 0.0
            for c in range(g * cg, (g + 1) * cg):
                s1 += w[c] * a1[c]
                s2 += w[c] * a2[c]
                dbp[n, c] = a1[c]
                dwp[n, c] = a2[c] * r
            for c in range(g * cg, (g + 1) * cg):
                k1[c] = r * w[c]
                k2[c] = r * r * r * s2 / cnt
                k3[c] = r * s1 / cnt
        for i in range(s_n):
            for c in range(c_n):
                dx[n, i, c] = k1[c] * dy[n, i, c] - (x[n, i, c] - muc[c]) * k2[c] - k3[c]
