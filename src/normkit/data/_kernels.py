"""Serial Numba kernels of the data scalers' CPU hot paths (private; imported only when numba
is installed, through :func:`normkit.data._arrays.serial_kernels`; cached on disk where the numba
backend's kernels are, :func:`normkit.backends.numba.cache_dir`).

Single-threaded on purpose: a streaming scaler's work per chunk is one or two passes over
memory, and on a small shared machine a second OpenMP thread costs more in waiting than it
brings in bandwidth (``normkit bench --data`` reports both). Each kernel is one pass and
folds the finiteness check into it, so a chunk is read once by ``partial_fit`` and once by
``transform``.

Numerics: moments in float64 (two passes over a cache-resident block of rows, blocks merged
by Chan et al.'s rule; ``fastmath`` allows reassociation and FMA only, no ``nnan``/``ninf``:
NaN and inf must survive to be detected); transforms in the data's dtype with IEEE arithmetic
and true division, as scikit-learn's (``error_model="numpy"`` drops numba's per-element
zero-division branch so the loop vectorizes; a scale is never 0).
"""

from __future__ import annotations

import numpy as np

from normkit.backends.numba._cache import njit

_FLAGS = {
    "fastmath": {"reassoc", "contract", "nsz"},
    "error_model": "numpy",  # no zero-division branch: the division loops vectorize
    "cache": True,
    "nogil": True,
}
#: The transforms: IEEE arithmetic, no fast-math (each rounding of scikit-learn's is kept).
_EXACT = {**_FLAGS, "fastmath": False}

#: Rows per block: 128 rows × 32 float64 columns stay in L1 between the block's two passes.
_RB = 128


@njit(**_FLAGS)
def moments_rows(x, mean, m2):  # pragma: no cover - jitted
    """Column mean and sum of squared deviations of ``x`` (n, F) into ``mean``/``m2`` (F,)
    float64. Returns False when ``x`` holds a NaN or inf (the results are then meaningless)."""
    n, f = x.shape
    bs = np.empty(f)
    bq = np.empty(f)
    mean[:] = 0.0
    m2[:] = 0.0
    n_acc = 0.0
    for start in range(0, n, _RB):
        end = min(start + _RB, n)
        nb = end - start
        bs[:] = 0.0
        bq[:] = 0.0
        for i in range(start, end):
            for c in range(f):
                bs[c] += x[i, c]
        for c in range(f):
            bs[c] /= nb
        for i in range(start, end):
            for c in range(f):
                d = x[i, c] - bs[c]
                bq[c] += d * d
        n_new = n_acc + nb
        for c in range(f):
            delta = bs[c] - mean[c]
            mean[c] += delta * nb / n_new
            m2[c] += bq[c] + delta * delta * n_acc * nb / n_new
        n_acc = n_new
    ok = True
    for c in range(f):
        # a NaN or inf anywhere makes its column's M2 NaN or inf
        if not (np.isfinite(m2[c]) and np.isfinite(mean[c])):
            ok = False
    return ok


@njit(**_FLAGS)
def column_sums(x):  # pragma: no cover - jitted
    """Sum of ``x`` (n, F) in float64, by column accumulators: NaN or inf when ``x`` holds a NaN
    or inf (a float32 sum cannot overflow float64)."""
    n, f = x.shape
    acc = np.zeros(f)
    for i in range(n):
        for c in range(f):
            acc[c] += x[i, c]
    return acc.sum()


@njit(**_EXACT)
def affine_rows(x, mean, scale, y, inverse):  # pragma: no cover - jitted
    """``y = (x − mean) / scale`` per column (``x · scale + mean`` when ``inverse``), with
    ``mean``/``scale`` given in ``x``'s dtype and computed in it, as scikit-learn's
    ``X -= mean_.astype(X.dtype); X /= scale_.astype(X.dtype)`` does: the result is bit for
    bit scikit-learn's. ``y`` may be ``x``: a row goes through a small buffer, which lets the
    compiler vectorize (it cannot prove ``y`` distinct from ``x``). Returns the float64 sum of
    ``x`` (NaN or inf when ``x`` holds one), the finiteness check folded into the pass and
    taken before a row is overwritten."""
    n, f = x.shape
    row = np.empty(f, dtype=x.dtype)
    acc = np.zeros(f)
    for i in range(n):
        for c in range(f):
            acc[c] += x[i, c]
        if inverse:
            for c in range(f):
                row[c] = x[i, c] * scale[c]
            for c in range(f):
                row[c] = row[c] + mean[c]
        else:
            for c in range(f):
                row[c] = x[i, c] - mean[c]
            for c in range(f):
                row[c] = row[c] / scale[c]
        for c in range(f):
            y[i, c] = row[c]
    return acc.sum()
