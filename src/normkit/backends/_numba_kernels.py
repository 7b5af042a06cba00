"""Numba CPU kernels of the ``numba`` backend (imported only when numba is installed).

Every kernel writes into caller-provided arrays (no allocation of big outputs here), so the
caller decides between fresh outputs and reused buffers. Conventions:

* Statistics accumulate in float64 (two passes over a cache-resident slice, or Chan et al.'s
  pairwise merge of cache-sized blocks), whatever the input dtype; the per-row/per-channel
  constants are then rounded once to the input dtype (stored into a small typed array and read
  back) so the streaming loops run in the input dtype at full SIMD width.
* ``fastmath`` allows reassociation/contraction (vectorised reductions, FMAs) but not
  ``nnan``/``ninf``: NaN and Inf propagate exactly as in torch.
* ``cache=True``: a process loads compiled kernels from ``NUMBA_CACHE_DIR`` instead of
  recompiling (see :mod:`normkit.backends.numba_backend`).

Layouts: rows ``(M, N)`` for layer/RMS norm over the last dim; ``(A, C, B)`` for batch norm with
the channel in the middle (contiguous NCHW: A = N, B = H·W); ``(M, C)`` rows for channels-last
batch norm; ``(N, C, S)`` and ``(N, S, C)`` for group norm contiguous and channels-last.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FM = {"reassoc", "contract", "nsz", "arcp"}
_PAR = {"parallel": True, "fastmath": _FM, "cache": True, "nogil": True}

# Rows per block in the channels-last statistics (block stays in L1 between its two passes).
_RB = 64


# --------------------------------------------------------------------------- layer / RMS norm


@njit(**_PAR)
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


@njit(**_PAR)
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


@njit(**_PAR)
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


# --------------------------------------------------------------------------- batch norm, (A, C, B)


@njit(**_PAR)
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


@njit(**_PAR)
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


@njit(**_PAR)
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


@njit(**_PAR)
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
        for start in range(lo, hi, _RB):
            end = min(start + _RB, hi)
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


@njit(**_PAR)
def affine_rows(x, mu, sc, b, y):  # pragma: no cover - jitted
    """y = (x − μ_c)·sc_c + b_c for channels-last (M, C) rows."""
    m_rows, c_n = x.shape
    for i in prange(m_rows):
        for c in range(c_n):
            y[i, c] = (x[i, c] - mu[c]) * sc[c] + b[c]


@njit(**_PAR)
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


@njit(**_PAR)
def bwd_apply_rows(dy, x, mu, k1, k2, k3, dx):  # pragma: no cover - jitted
    """dx = k1_c·dy − (x − μ_c)·k2_c − k3_c for channels-last (M, C) rows."""
    m_rows, c_n = x.shape
    for i in prange(m_rows):
        for c in range(c_n):
            dx[i, c] = k1[c] * dy[i, c] - (x[i, c] - mu[c]) * k2[c] - k3[c]


# --------------------------------------------------------------------------- group norm


@njit(**_PAR)
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


@njit(**_PAR)
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


@njit(**_PAR)
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
        for start in range(0, s_n, _RB):
            end = min(start + _RB, s_n)
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


@njit(**_PAR)
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
