"""One numba call for the statistics of many small tensors (the recorder's fast path on CPU).

Private; imported only when numba is installed. A training step of a small model spends most of
a watched step's extra time in dispatch: each torch reduction on a tensor of a few thousand
values costs 3–6 µs of overhead and a layer needs five of them. Here one call walks a table of
tensors given by address (``Tensor.data_ptr()``), so the cost per tensor is a few hundred ns
plus one pass over its values.

A row of the int64 table ``meta`` describes one contiguous CPU tensor:
``(address, numel, is_float64, mode, channels, inner, offset)``; the float64 table ``out`` gets
``(Σx, Σx², min, max, count)`` per row. Modes:

* :data:`MOMENTS` — Σx, Σx², min, max (min/max NaN when any value is NaN, as ``torch.aminmax``);
* :data:`RELU` — and ``count`` = channels with some value > 0, the channel of flat index ``i``
  being ``(i // inner) % channels`` (contiguous NCHW: ``inner = H·W``; a 1-D tensor: every
  value its own unit);
* :data:`SIGMOID` / :data:`TANH` — and ``count`` = values outside [0.01, 0.99] / |y| > 0.99;
* :data:`SUMSQ` — Σx² only (gradient norms);
* :data:`SNAPSHOT` — Σx², and the values copied into ``snap32``/``snap64`` at ``offset``;
* :data:`DELTA` — Σ(x − snapshot)² (the optimizer step's ‖Δw‖², snapshot taken before), in
  column 0: a row's snapshot and delta share one ``out`` row, whose column 1 keeps Σw².

:func:`replay_stats` is the call of a replayed recorder phase: it also writes the addresses of
this step's tensors into ``meta`` and gathers the results the recorder keeps into one vector.

Sums accumulate in float64. ``fastmath`` allows reassociation only (no ``nnan``/``ninf``), so
NaN and Inf propagate. The tensors must stay alive during the call: the caller holds them.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from normkit.diagnostics._modules import SAT_HIGH, SAT_LOW

__all__ = [
    "DELTA",
    "MOMENTS",
    "RELU",
    "SIGMOID",
    "SNAPSHOT",
    "SUMSQ",
    "TANH",
    "replay_stats",
    "tensor_stats",
]

MOMENTS, RELU, SIGMOID, TANH, SUMSQ, SNAPSHOT, DELTA = range(7)
_FM = {"reassoc", "contract", "nsz", "arcp"}


@intrinsic
def _address(typingctx, addr):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """int64 address → void* (numba has no built-in cast from an integer to a pointer)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(addr), codegen


@njit(fastmath=_FM, cache=True, nogil=True)
def _sumsq(x):  # pragma: no cover - jitted
    q = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        q += v * v
    return q


@njit(fastmath=_FM, cache=True, nogil=True)
def _moments(x, bits, ubits, row):  # pragma: no cover - jitted
    """Σx, Σx², min, max. Min/max come from the float bit patterns as integers (integer
    min/max reductions vectorise, float ones do not without ``nnan``): as signed integers the
    non-negative floats are ordered like the floats, the negative ones reversed, and as
    unsigned integers the negative ones come last, ordered by magnitude. So the signed max is
    the max when some value is ≥ +0 (else the signed min is: the negative value nearest 0), and
    the unsigned max is the min when some value is ≤ −0 (else the signed min is). NaN as
    ``torch.aminmax``: both NaN. ``bits``/``ubits``: ``x`` viewed as signed/unsigned ints."""
    s = 0.0
    q = 0.0
    smax = np.iinfo(bits.dtype).min
    smin = np.iinfo(bits.dtype).max
    umax = ubits.dtype.type(0)
    for i in range(x.size):
        v = np.float64(x[i])
        s += v
        q += v * v
        k = bits[i]
        smax = max(smax, k)
        smin = min(smin, k)
        umax = max(umax, ubits[i])
    ends = np.empty(2, bits.dtype)
    ends[0] = smin if smin >= 0 else bits.dtype.type(umax)  # (the same bits, reinterpreted)
    ends[1] = smax if smax >= 0 else smin
    fl = ends.view(x.dtype)
    row[0] = s
    row[1] = q
    row[2] = fl[0]
    row[3] = fl[1]
    if np.isnan(s):  # NaN bit patterns sort beyond ±inf; torch.aminmax returns NaN for both
        for i in range(x.size):
            if np.isnan(x[i]):
                row[2] = np.nan
                row[3] = np.nan
                break


@njit(fastmath=_FM, cache=True, nogil=True)
def _alive_channels(bits, channels, inner):  # pragma: no cover - jitted
    """Channels with some value > 0 (or NaN, as ``amax`` then ``count_nonzero``): a float is
    > 0 exactly when its bit pattern is a positive signed integer."""
    outer = bits.size // (channels * inner)
    xs = bits.reshape(outer, channels, inner)
    count = 0
    for c in range(channels):
        for o in range(outer):
            m = bits.dtype.type(0)
            for j in range(inner):
                m = max(m, xs[o, c, j])
            if m > 0:
                count += 1
                break
    return count


@njit(fastmath=_FM, cache=True, nogil=True)
def _one(x, bits, ubits, mode, channels, inner, snap, off, row):  # pragma: no cover - jitted
    n = x.size
    if mode == SUMSQ:
        row[1] = _sumsq(x)
    elif mode == SNAPSHOT:
        for i in range(n):
            snap[off + i] = x[i]
        row[1] = _sumsq(x)
    elif mode == DELTA:
        q = 0.0
        for i in range(n):
            d = np.float64(x[i]) - np.float64(snap[off + i])
            q += d * d
        row[0] = q
    else:
        _moments(x, bits, ubits, row)
        count = 0
        if mode == RELU:
            count = _alive_channels(bits, channels, inner)
        elif mode == SIGMOID:
            for i in range(n):
                count += (x[i] < SAT_LOW) | (x[i] > SAT_HIGH)
        elif mode == TANH:
            for i in range(n):
                count += abs(x[i]) > SAT_HIGH
        row[4] = count


@njit(cache=True, nogil=True)
def tensor_stats(meta, out, snap32, snap64):  # pragma: no cover - jitted
    """Fill ``out[k]`` for every row ``k`` of ``meta`` (see the module docstring)."""
    for k in range(meta.shape[0]):
        addr, n, is64, mode, channels, inner, off = meta[k]
        row = out[k]
        if is64:
            x64 = carray(_address(addr), (n,), np.float64)
            bits64 = x64.view(np.int64)
            _one(x64, bits64, bits64.view(np.uint64), mode, channels, inner, snap64, off, row)
        else:
            x32 = carray(_address(addr), (n,), np.float32)
            bits32 = x32.view(np.int32)
            _one(x32, bits32, bits32.view(np.uint32), mode, channels, inner, snap32, off, row)


@njit(cache=True, nogil=True)
def replay_stats(ptrs, meta, out, take, root, vals, snap32, snap64):  # pragma: no cover - jitted
    """:func:`tensor_stats` with this step's addresses ``ptrs`` put into ``meta`` first (none:
    keep those in it), then ``vals[j] = out.flat[take[j]]``, its square root where ``root[j]``
    (‖x‖ from Σx²). ``ptrs``/``vals`` may be any int64/float64 buffer (``array.array``)."""
    for k in range(len(ptrs)):
        meta[k, 0] = ptrs[k]
    tensor_stats(meta, out, snap32, snap64)
    flat = out.ravel()
    for j in range(len(vals)):
        v = flat[take[j]]
        vals[j] = np.sqrt(v) if root[j] else v
