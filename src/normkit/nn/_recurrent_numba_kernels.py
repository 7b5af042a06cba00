"""Numba kernels of one LN-LSTM time step, forward and backward (imported only with numba).

Private; :mod:`normkit.nn._recurrent_numba` drives them. The recurrent matmuls stay in torch
(``torch.mm``); each kernel does *all* the elementwise work of one step for every batch row in
one call, reading and writing the ``(T, …)`` buffers of the whole sequence at index ``t``.

Conventions (as :mod:`normkit.backends.numba.kernels`): layer-norm statistics and the reductions
of the backward accumulate in float64; ``1/σ`` and the mean are stored (rounded) in the input
dtype and the elementwise loops run in the input dtype. ``fastmath`` without ``nnan``/``ninf``;
``cache=True``. The step kernels split the batch rows into one block per thread
(``prange``; the caller sets the thread count, one thread for small steps); each block has its
own float64 gradient partials, summed once after the loop.

σ and tanh are computed here rather than by ``np.exp``/``np.tanh``: without Intel SVML numba
calls the scalar libm functions per element (~3 ns / ~14 ns on this machine), slower than
torch's vectorized kernels. Ours are Cephes' ``expf``/``exp`` (Cody–Waite reduction by ln 2 with
strict float ops, then a polynomial / Padé form, exponent set from the bits) and ``tanhf``/
``tanh`` (an odd polynomial / rational form below 0.625, else ``1 − 2/(e^{2|x|} + 1)``), in the
input dtype, ≤ a few ulp, branch-free so they vectorize; ``σ(x) = 1/(1 + e^{−x})``. NaN and
±Inf propagate as in torch.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from normkit.backends.numba._cache import njit

_FM = {"reassoc", "contract", "nsz", "arcp"}
# error_model="numpy": no zero-division checks (a branch per division would stop vectorization)
_SER = {"fastmath": _FM, "error_model": "numpy", "cache": True, "nogil": True}
_PAR = {**_SER, "parallel": True}
_INL = {"fastmath": _FM, "error_model": "numpy"}

# Cody–Waite split of ln 2 (few-bit high part: n·C1 is exact), Cephes' expf / exp / tanhf / tanh
_F = np.float32
_LN2_SPLIT = {32: (0.693359375, -2.12194440e-4), 64: (6.93145751953125e-1, 1.42860682030941723e-6)}
_E32 = tuple(_F(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                             1.6666665459e-1, 5.0000001201e-1))  # fmt: skip
_T32 = tuple(_F(v) for v in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                             1.33314422036e-1, -3.33332819422e-1))  # fmt: skip
_P64 = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_Q64 = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
        2.00000000000000000009e0)  # fmt: skip
_TP64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TQ64 = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
# e^x is computed inside [LO, HI] (finite, normal); beyond, it is +inf / 0 (the true value is
# within a few subnormals of 0 below LO)
_HI32, _LO32, _HI64, _LO64 = _F(88.0), _F(-87.0), 709.0, -708.0
_INF32 = _F(np.inf)
_L2E32, _L2E64 = _F(1.4426950408889634), 1.4426950408889634
_0_32, _HALF32, _1_32, _2_32, _TSMALL32 = _F(0.0), _F(0.5), _F(1.0), _F(2.0), _F(0.625)


@intrinsic
def _reduce_ln2(typingctx, x, n):  # pragma: no cover - compile-time
    """``x − n·ln2`` as ``(x − n·C1) − n·C2`` with *strict* float ops: fast-math
    reassociation must not fold the two products back into one (that would lose the split)."""
    if not (isinstance(x, types.Float) and x == n):
        return None
    c1, c2 = _LN2_SPLIT[x.bitwidth]

    def codegen(context, builder, signature, args):
        # numba's fast-math pass flags only float ops that carry no flag yet: "nsz" (harmless
        # here) keeps reassociation off these four
        xv, nv = args
        nsz = ("nsz",)
        t = builder.fsub(xv, builder.fmul(nv, ir.Constant(xv.type, c1), flags=nsz), flags=nsz)
        return builder.fsub(t, builder.fmul(nv, ir.Constant(xv.type, c2), flags=nsz), flags=nsz)

    return x(x, n), codegen


@intrinsic
def _pow2(typingctx, n):  # pragma: no cover - compile-time
    """``2**n`` for an integral float ``n`` in the normal exponent range, built from its bits."""
    if not isinstance(n, types.Float):
        return None
    bits, bias, shift = (32, 127, 23) if n.bitwidth == 32 else (64, 1023, 52)

    def codegen(context, builder, signature, args):
        it = ir.IntType(bits)
        i = builder.add(builder.fptosi(args[0], it), ir.Constant(it, bias))
        return builder.bitcast(builder.shl(i, ir.Constant(it, shift)), args[0].type)

    return n(n), codegen


@njit(**_INL)
def _exp32(x):  # pragma: no cover - jitted (inlined)
    xc = x
    if xc > _HI32:
        xc = _HI32
    if xc < _LO32:
        xc = _LO32
    n = np.floor(xc * _L2E32 + _HALF32)
    if n != n:  # NaN: keep the integer conversion defined; r (NaN) carries the NaN out
        n = _0_32
    r = _reduce_ln2(xc, n)
    p = ((((_E32[0] * r + _E32[1]) * r + _E32[2]) * r + _E32[3]) * r + _E32[4]) * r + _E32[5]
    e = (p * r * r + r + _1_32) * _pow2(n)
    if x > _HI32:  # overflow / (sub)normal underflow, as libm
        e = _INF32
    if x < _LO32:
        e = _0_32
    return e


@njit(**_INL)
def _exp64(x):  # pragma: no cover - jitted (inlined)
    xc = x
    if xc > _HI64:
        xc = _HI64
    if xc < _LO64:
        xc = _LO64
    n = np.floor(xc * _L2E64 + 0.5)
    if n != n:
        n = 0.0
    r = _reduce_ln2(xc, n)
    rr = r * r
    p = r * ((_P64[0] * rr + _P64[1]) * rr + _P64[2])
    q = ((_Q64[0] * rr + _Q64[1]) * rr + _Q64[2]) * rr + _Q64[3]
    e = (1.0 + 2.0 * p / (q - p)) * _pow2(n)
    if x > _HI64:
        e = np.inf
    if x < _LO64:
        e = 0.0
    return e


def _sigmoid32(x):  # pragma: no cover - jitted (inlined)
    return _1_32 / (_1_32 + _exp32(-x))


def _sigmoid64(x):  # pragma: no cover - jitted (inlined)
    return 1.0 / (1.0 + _exp64(-x))


def _tanh32(x):  # pragma: no cover - jitted (inlined)
    ax = x if x >= _0_32 else -x
    big = _1_32 - _2_32 / (_exp32(ax + ax) + _1_32)
    big = big if x >= _0_32 else -big
    z = x * x
    small = ((((_T32[0] * z + _T32[1]) * z + _T32[2]) * z + _T32[3]) * z + _T32[4]) * z * x + x
    return small if ax < _TSMALL32 else big


def _tanh64(x):  # pragma: no cover - jitted (inlined)
    ax = x if x >= 0.0 else -x
    big = 1.0 - 2.0 / (_exp64(ax + ax) + 1.0)
    big = big if x >= 0.0 else -big
    z = x * x
    pz = (_TP64[0] * z + _TP64[1]) * z + _TP64[2]
    qz = ((z + _TQ64[0]) * z + _TQ64[1]) * z + _TQ64[2]
    small = x + x * z * (pz / qz)
    return small if ax < 0.625 else big


def _like(v, x):  # pragma: no cover - stub, replaced by the overload in jitted code
    """``v`` rounded to the float type of ``x``."""
    raise NotImplementedError


@overload(_like, jit_options=_INL)
def _like_ov(v, x):  # pragma: no cover - compile-time
    if x == types.float32:
        return lambda v, x: np.float32(v)
    if x == types.float64:
        return lambda v, x: np.float64(v)
    return None


def _sigmoid(x):  # pragma: no cover - stub, replaced by the overload in jitted code
    raise NotImplementedError


def _tanh(x):  # pragma: no cover - stub, replaced by the overload in jitted code
    raise NotImplementedError


@overload(_sigmoid, jit_options=_INL)
def _sigmoid_ov(x):  # pragma: no cover - compile-time
    if x == types.float32:
        return _sigmoid32
    if x == types.float64:
        return _sigmoid64
    return None


@overload(_tanh, jit_options=_INL)
def _tanh_ov(x):  # pragma: no cover - compile-time
    if x == types.float32:
        return _tanh32
    if x == types.float64:
        return _tanh64
    return None


# --------------------------------------------------------------------------- forward


@njit(**_SER)
def _ln_stats(x, mu_out, rs_out, i0, i1, i2, eps):  # pragma: no cover - jitted
    """Mean and 1/σ of the row ``x`` (float64 two-pass), stored rounded at ``[i0, i1, i2]``."""
    n = x.shape[0]
    acc = 0.0
    for j in range(n):
        acc += x[j]
    mu = acc / n
    q = 0.0
    for j in range(n):
        d = x[j] - mu
        q += d * d
    mu_out[i0, i1, i2] = mu
    rs_out[i0, i1, i2] = 1.0 / np.sqrt(q / n + eps)


@njit(**_SER)
def _input_part(
    t, b, k, ain, ln_ih, g_ih, has_bias, bias, eps, acts, mu_ih, rs_ih
):  # pragma: no cover
    """Gate block ``k`` of row ``b`` at step ``t``: ``acts = LN(x W_ihᵀ)·g_ih (+ bias)``, the
    part of the pre-activation that does not depend on ``h`` (LSTM and GRU alike)."""
    nh = ain.shape[3]
    if ln_ih:
        _ln_stats(ain[t, b, k], mu_ih, rs_ih, t, b, k, eps)
        m = mu_ih[t, b, k]
        r = rs_ih[t, b, k]
        for j in range(nh):
            acts[t, b, k, j] = (ain[t, b, k, j] - m) * r * g_ih[k, j]
    else:
        for j in range(nh):
            acts[t, b, k, j] = ain[t, b, k, j]
    if has_bias:
        for j in range(nh):
            acts[t, b, k, j] += bias[k, j]


@njit(**_SER)
def _fwd_rows(
    b0, b1, t, ain, ln_ih, g_ih, has_bias, bias, a, ta, ln_hh, g_hh, c_prev, ln_cell, w_c, b_c,
    eps, acts, c_all, tc, out, mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c, has_mask, mask, h_prev,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`lstm_fwd_step` for the rows ``b0 … b1 − 1``."""
    _, _, ng, nh = ain.shape
    for b in range(b0, b1):
        if has_mask and mask[t, b] == 0:  # padded step: the state is carried unchanged
            for j in range(nh):
                out[t, b, j] = h_prev[b, j]
                c_all[t, b, j] = c_prev[b, j]
            continue
        for k in range(ng):
            _input_part(t, b, k, ain, ln_ih, g_ih, has_bias, bias, eps, acts, mu_ih, rs_ih)
            if ln_hh:
                _ln_stats(a[ta, b, k], mu_hh, rs_hh, t, b, k, eps)
                m = mu_hh[t, b, k]
                r = rs_hh[t, b, k]
                for j in range(nh):
                    acts[t, b, k, j] += (a[ta, b, k, j] - m) * r * g_hh[k, j]
            else:
                for j in range(nh):
                    acts[t, b, k, j] += a[ta, b, k, j]
            if k == 2:
                for j in range(nh):
                    acts[t, b, k, j] = _tanh(acts[t, b, k, j])
            else:
                for j in range(nh):
                    acts[t, b, k, j] = _sigmoid(acts[t, b, k, j])
        for j in range(nh):
            c_all[t, b, j] = acts[t, b, 1, j] * c_prev[b, j] + acts[t, b, 0, j] * acts[t, b, 2, j]
        if ln_cell:
            _ln_stats(c_all[t, b], mu_c, rs_c, t, b, 0, eps)
            m = mu_c[t, b, 0]
            r = rs_c[t, b, 0]
            for j in range(nh):
                tc[t, b, j] = _tanh((c_all[t, b, j] - m) * r * w_c[j] + b_c[j])
                out[t, b, j] = acts[t, b, 3, j] * tc[t, b, j]
        else:
            for j in range(nh):
                tc[t, b, j] = _tanh(c_all[t, b, j])
                out[t, b, j] = acts[t, b, 3, j] * tc[t, b, j]


@njit(**_PAR)
def lstm_fwd_step(
    t, ain, ln_ih, g_ih, has_bias, bias, a, ta, ln_hh, g_hh, c_prev, ln_cell, w_c, b_c, eps,
    acts, c_all, tc, out, mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c, has_mask, mask, h_prev, nc,
):  # fmt: skip  # pragma: no cover - jitted
    """One LN-LSTM step for every row ``b`` of the batch (in ``nc`` blocks of rows).

    From ``ain[t] = x_t W_ihᵀ`` and ``a[ta] = h_{t−1} W_hhᵀ`` (both ``(B, G, H)``):
    gates = (LN(ain)⊙g_ih if ln_ih else ain) + bias + (LN(a)⊙g_hh if ln_hh else a), layer
    norms per gate block without shift; i, f, o = σ(·), g = tanh(·) → ``acts[t]``;
    c = f·c_prev + i·g → ``c_all[t]``; ``tc[t] = tanh(LN(c)·w_c + b_c)`` (or ``tanh(c)``);
    ``out[t] = o·tc[t]``. Statistics go to ``mu_*``/``rs_*`` (``(T, B, G)``; cell ``(T, B, 1)``).
    With ``has_mask``, a row whose ``mask[t, b]`` is 0 (a padded step) carries ``h_prev`` and
    ``c_prev`` unchanged into ``out[t]``/``c_all[t]``.
    """
    nb = ain.shape[1]
    for c in prange(nc):
        _fwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, ain, ln_ih, g_ih, has_bias, bias, a, ta,
            ln_hh, g_hh, c_prev, ln_cell, w_c, b_c, eps,
            acts, c_all, tc, out, mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c, has_mask, mask, h_prev,
        )  # fmt: skip


@njit(**_SER)
def lstm_fwd_step_serial(
    t, ain, ln_ih, g_ih, has_bias, bias, a, ta, ln_hh, g_hh, c_prev, ln_cell, w_c, b_c, eps,
    acts, c_all, tc, out, mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c, has_mask, mask, h_prev, nc,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`lstm_fwd_step` on the calling thread (no parallel launch, a cheaper compile)."""
    nb = ain.shape[1]
    for c in range(nc):
        _fwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, ain, ln_ih, g_ih, has_bias, bias, a, ta,
            ln_hh, g_hh, c_prev, ln_cell, w_c, b_c, eps,
            acts, c_all, tc, out, mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c, has_mask, mask, h_prev,
        )  # fmt: skip


# --------------------------------------------------------------------------- backward


@njit(**_SER)
def _ln_bwd(dy, w, x, m, r, dx, dw, k):  # pragma: no cover - jitted
    """Layer-norm backward of one row: dx = r·(w·dy − mean(w·dy) − x̂·mean(w·dy·x̂)),
    x̂ = (x − m)·r; ``dw[k] += dy·x̂`` (float64). Sums in float64."""
    n = x.shape[0]
    s1 = 0.0
    s2 = 0.0
    for j in range(n):
        xh = (x[j] - m) * r
        gy = dy[j] * w[k, j]
        s1 += gy
        s2 += gy * xh
        dw[k, j] += dy[j] * xh
    k1 = _like(s1 / n, r)
    k2 = _like(s2 / n, r)
    for j in range(n):
        xh = (x[j] - m) * r
        dx[j] = r * (dy[j] * w[k, j] - k1 - xh * k2)


@njit(**_SER)
def _ln_bwd_or_copy(ln, dy, w, x, mu, rs, t, b, k, dx, dw):  # pragma: no cover - jitted
    """``dx`` = the layer-norm backward of ``dy`` for row ``x[t, b, k]`` (gain gradient into
    ``dw[k]``) when ``ln``, else ``dy`` itself. ``x``/``mu``/``rs`` are only indexed under
    ``ln``: without it they are 1-element placeholders."""
    if ln:
        _ln_bwd(dy, w, x[t, b, k], mu[t, b, k], rs[t, b, k], dx, dw, k)
    else:
        for j in range(dy.shape[0]):
            dx[j] = dy[j]


@njit(**_SER)
def _padded_bwd(has_mask, mask, t, b, dh, d_out, carry, d_ain, d_a, ta):  # pragma: no cover
    """Row ``b`` at a padded step ``t`` (state carried): the gradient of h_t passes to h_{t−1}
    whole (``carry``), nothing reaches the step's pre-activations; ``True`` if so. On valid
    steps of a masked run ``carry`` is set to 0 here (the LSTM has no direct h path)."""
    if not has_mask:
        return False
    nh = dh.shape[1]
    if mask[t, b] != 0:
        for j in range(nh):
            carry[b, j] = 0.0
        return False
    for j in range(nh):
        carry[b, j] = dh[b, j] + d_out[t, b, j]
    for k in range(d_a.shape[2]):
        for j in range(nh):
            d_a[ta, b, k, j] = 0.0
            d_ain[ta, b, k, j] = 0.0
    return True


@njit(**_SER)
def _bwd_rows(
    b0, b1, t, acts, tc, c_all, c_prev, dh, d_out, dc,
    ln_cell, w_c, mu_c, rs_c, dwc,
    ln_hh, g_hh, a_hh, mu_hh, rs_hh, dgh,
    ln_ih, g_ih, ain, mu_ih, rs_ih, dgi, dbs,
    d_ain, d_a, ta, tm, dgc, has_mask, mask, carry,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`lstm_bwd_step` for the rows ``b0 … b1 − 1`` with one block's partials/scratch."""
    _, _, ng, nh = acts.shape
    one = _like(1.0, acts[0, 0, 0, 0])  # a float literal would promote float32 math to float64
    for b in range(b0, b1):
        if _padded_bwd(has_mask, mask, t, b, dh, d_out, carry, d_ain, d_a, ta):
            continue
        # through h = o·tanh(cn): d(cn) into tm[0], d(o-preact) into dgc[3]
        for j in range(nh):
            dhj = dh[b, j] + d_out[t, b, j]
            o = acts[t, b, 3, j]
            v = tc[t, b, j]
            tm[0, j] = dhj * o * (one - v * v)
            dgc[3, j] = dhj * v * o * (one - o)
        if ln_cell:
            for j in range(nh):
                dwc[1, j] += tm[0, j]
            _ln_bwd(tm[0], w_c, c_all[t, b], mu_c[t, b, 0], rs_c[t, b, 0], tm[1], dwc, 0)
            for j in range(nh):
                tm[0, j] = tm[1, j]
        for j in range(nh):
            i = acts[t, b, 0, j]
            f = acts[t, b, 1, j]
            g = acts[t, b, 2, j]
            dct = dc[b, j] + tm[0, j]
            dgc[0, j] = dct * g * i * (one - i)
            dgc[1, j] = dct * c_prev[b, j] * f * (one - f)
            dgc[2, j] = dct * i * (one - g * g)
            dc[b, j] = dct * f
        for k in range(ng):
            for j in range(nh):
                dbs[k, j] += dgc[k, j]
            _ln_bwd_or_copy(ln_hh, dgc[k], g_hh, a_hh, mu_hh, rs_hh, t, b, k, d_a[ta, b, k], dgh)
            _ln_bwd_or_copy(ln_ih, dgc[k], g_ih, ain, mu_ih, rs_ih, t, b, k, d_ain[ta, b, k], dgi)


@njit(**_PAR)
def lstm_bwd_step(
    t, acts, tc, c_all, c_prev, dh, d_out, dc,
    ln_cell, w_c, mu_c, rs_c, d_w_c,
    ln_hh, g_hh, a_hh, mu_hh, rs_hh, d_g_hh,
    ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih, d_bias,
    d_ain, d_a, ta, tmp, dg, has_mask, mask, carry,
):  # fmt: skip  # pragma: no cover - jitted
    """Backward of :func:`lstm_fwd_step` at step ``t`` for every row.

    In: ``dh`` (B, H) the gradient reaching h_t through the recurrence (``d_a[t+1] W_hh`` or
    ``dh_T``), ``d_out[t]``, the carried ``dc`` (B, H, updated in place to the gradient of
    c_{t−1}). Out: ``d_ain[ta]`` (of ``x_t W_ihᵀ``) and ``d_a[ta]`` (of ``h_{t−1} W_hhᵀ``; the
    same array when neither site has a layer norm), ``ta`` the step's slot in these chunk
    buffers; the float64 accumulators
    ``d_w_c`` (rows: gain, shift), ``d_g_hh``, ``d_g_ih``, ``d_bias`` gain the step's
    contribution. Scratch: ``tmp`` (2, H) and ``dg`` (G, H) in the input dtype.
    """
    nb = acts.shape[1]
    nc = tmp.shape[0]
    for c in prange(nc):
        _bwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, acts, tc, c_all, c_prev, dh, d_out, dc,
            ln_cell, w_c, mu_c, rs_c, d_w_c[c],
            ln_hh, g_hh, a_hh, mu_hh, rs_hh, d_g_hh[c],
            ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih[c], d_bias[c],
            d_ain, d_a, ta, tmp[c], dg[c], has_mask, mask, carry,
        )  # fmt: skip


@njit(**_SER)
def lstm_bwd_step_serial(
    t, acts, tc, c_all, c_prev, dh, d_out, dc,
    ln_cell, w_c, mu_c, rs_c, d_w_c,
    ln_hh, g_hh, a_hh, mu_hh, rs_hh, d_g_hh,
    ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih, d_bias,
    d_ain, d_a, ta, tmp, dg, has_mask, mask, carry,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`lstm_bwd_step` on the calling thread (no parallel launch, a cheaper compile)."""
    nb = acts.shape[1]
    nc = tmp.shape[0]
    for c in range(nc):
        _bwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, acts, tc, c_all, c_prev, dh, d_out, dc,
            ln_cell, w_c, mu_c, rs_c, d_w_c[c],
            ln_hh, g_hh, a_hh, mu_hh, rs_hh, d_g_hh[c],
            ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih[c], d_bias[c],
            d_ain, d_a, ta, tmp[c], dg[c], has_mask, mask, carry,
        )  # fmt: skip


# --------------------------------------------------------------------------- GRU


@njit(**_SER)
def _gru_fwd_rows(
    b0, b1, t, ain, ln_ih, g_ih, a, ln_hh, g_hh, has_bias, b_ih, b_hh, h_prev, eps,
    acts, hn, out, mu_ih, rs_ih, mu_hh, rs_hh, has_mask, mask,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`gru_fwd_step` for the rows ``b0 … b1 − 1``."""
    _, _, ng, nh = ain.shape
    for b in range(b0, b1):
        if has_mask and mask[t, b] == 0:  # padded step: the state is carried unchanged
            for j in range(nh):
                out[t, b, j] = h_prev[b, j]
            continue
        for k in range(ng):
            _input_part(t, b, k, ain, ln_ih, g_ih, has_bias, b_ih, eps, acts, mu_ih, rs_ih)
            if ln_hh:
                _ln_stats(a[t, b, k], mu_hh, rs_hh, t, b, k, eps)
            if k < 2:  # r, z: σ(x part + h part)
                if ln_hh:
                    m = mu_hh[t, b, k]
                    r = rs_hh[t, b, k]
                    for j in range(nh):
                        acts[t, b, k, j] += (a[t, b, k, j] - m) * r * g_hh[k, j]
                else:
                    for j in range(nh):
                        acts[t, b, k, j] += a[t, b, k, j]
                if has_bias:
                    for j in range(nh):
                        acts[t, b, k, j] += b_hh[k, j]
                for j in range(nh):
                    acts[t, b, k, j] = _sigmoid(acts[t, b, k, j])
            else:  # n = tanh(x part + r ⊙ h part), the h part kept in hn
                if ln_hh:
                    m = mu_hh[t, b, k]
                    r = rs_hh[t, b, k]
                    for j in range(nh):
                        hn[t, b, j] = (a[t, b, k, j] - m) * r * g_hh[k, j]
                else:
                    for j in range(nh):
                        hn[t, b, j] = a[t, b, k, j]
                if has_bias:
                    for j in range(nh):
                        hn[t, b, j] += b_hh[k, j]
                for j in range(nh):
                    acts[t, b, 2, j] = _tanh(acts[t, b, 2, j] + acts[t, b, 0, j] * hn[t, b, j])
        for j in range(nh):
            n = acts[t, b, 2, j]
            out[t, b, j] = n + acts[t, b, 1, j] * (h_prev[b, j] - n)


@njit(**_PAR)
def gru_fwd_step(
    t, ain, ln_ih, g_ih, a, ln_hh, g_hh, has_bias, b_ih, b_hh, h_prev, eps,
    acts, hn, out, mu_ih, rs_ih, mu_hh, rs_hh, has_mask, mask, nc,
):  # fmt: skip  # pragma: no cover - jitted
    """One LN-GRU step for every row (in ``nc`` blocks of rows), gate order r, z, n.

    From ``ain[t] = x_t W_ihᵀ`` and ``a[t] = h_{t−1} W_hhᵀ`` (``(B, 3, H)``), with
    ``x_k = (LN(ain)⊙g_ih if ln_ih else ain) + b_ih`` and ``h_k`` likewise from ``a``:
    r = σ(x_r + h_r), z = σ(x_z + h_z) → ``acts[t, :, 0/1]``; ``hn[t] = h_n``;
    n = tanh(x_n + r·h_n) → ``acts[t, :, 2]``; ``out[t] = (1 − z)·n + z·h_{t−1}``.
    """
    nb = ain.shape[1]
    for c in prange(nc):
        _gru_fwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, ain, ln_ih, g_ih, a, ln_hh, g_hh, has_bias,
            b_ih, b_hh, h_prev, eps, acts, hn, out, mu_ih, rs_ih, mu_hh, rs_hh, has_mask, mask,
        )  # fmt: skip


@njit(**_SER)
def gru_fwd_step_serial(
    t, ain, ln_ih, g_ih, a, ln_hh, g_hh, has_bias, b_ih, b_hh, h_prev, eps,
    acts, hn, out, mu_ih, rs_ih, mu_hh, rs_hh, has_mask, mask, nc,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`gru_fwd_step` on the calling thread (no parallel launch, a cheaper compile)."""
    nb = ain.shape[1]
    for c in range(nc):
        _gru_fwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, ain, ln_ih, g_ih, a, ln_hh, g_hh, has_bias,
            b_ih, b_hh, h_prev, eps, acts, hn, out, mu_ih, rs_ih, mu_hh, rs_hh, has_mask, mask,
        )  # fmt: skip


@njit(**_SER)
def _gru_bwd_rows(
    b0, b1, t, acts, hn, h_prev, dh, d_out, carry,
    ln_ih, g_ih, ain, mu_ih, rs_ih, dgi, dbi,
    ln_hh, g_hh, a, mu_hh, rs_hh, dgh, dbh,
    d_ain, d_a, ta, gx, gh, has_mask, mask,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`gru_bwd_step` for the rows ``b0 … b1 − 1`` with one block's partials/scratch."""
    _, _, ng, nh = acts.shape
    one = _like(1.0, acts[0, 0, 0, 0])
    for b in range(b0, b1):
        if _padded_bwd(has_mask, mask, t, b, dh, d_out, carry, d_ain, d_a, ta):
            continue
        for j in range(nh):
            dht = dh[b, j] + d_out[t, b, j]
            r = acts[t, b, 0, j]
            z = acts[t, b, 1, j]
            n = acts[t, b, 2, j]
            carry[b, j] = dht * z
            dnp = dht * (one - z) * (one - n * n)
            drp = dnp * hn[t, b, j] * r * (one - r)
            dzp = dht * (h_prev[b, j] - n) * z * (one - z)
            gx[0, j] = drp
            gx[1, j] = dzp
            gx[2, j] = dnp
            gh[0, j] = drp
            gh[1, j] = dzp
            gh[2, j] = dnp * r
        for k in range(ng):
            for j in range(nh):
                dbi[k, j] += gx[k, j]
                dbh[k, j] += gh[k, j]
            _ln_bwd_or_copy(ln_hh, gh[k], g_hh, a, mu_hh, rs_hh, t, b, k, d_a[ta, b, k], dgh)
            _ln_bwd_or_copy(ln_ih, gx[k], g_ih, ain, mu_ih, rs_ih, t, b, k, d_ain[ta, b, k], dgi)


@njit(**_PAR)
def gru_bwd_step(
    t, acts, hn, h_prev, dh, d_out, carry,
    ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih, d_b_ih,
    ln_hh, g_hh, a, mu_hh, rs_hh, d_g_hh, d_b_hh,
    d_ain, d_a, ta, gx, gh, has_mask, mask,
):  # fmt: skip  # pragma: no cover - jitted
    """Backward of :func:`gru_fwd_step` at step ``t`` for every row.

    In: ``dh`` (B, H) the gradient reaching h_t through the recurrence, ``d_out[t]``. Out:
    ``carry`` (B, H) = the direct part z·dh_t of the gradient of h_{t−1} (the caller adds
    ``d_a W_hh``), ``d_ain[ta]`` / ``d_a[ta]`` the gradients of ``x_t W_ihᵀ`` / ``h_{t−1} W_hhᵀ``
    in slot ``ta`` of the chunk buffers; float64 partials ``(P, 3, H)`` of the LN gains and the
    biases gain the step's contribution. Scratch ``gx``/``gh`` ``(P, 3, H)``.
    """
    nb = acts.shape[1]
    nc = gx.shape[0]
    for c in prange(nc):
        _gru_bwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, acts, hn, h_prev, dh, d_out, carry,
            ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih[c], d_b_ih[c],
            ln_hh, g_hh, a, mu_hh, rs_hh, d_g_hh[c], d_b_hh[c],
            d_ain, d_a, ta, gx[c], gh[c], has_mask, mask,
        )  # fmt: skip


@njit(**_SER)
def gru_bwd_step_serial(
    t, acts, hn, h_prev, dh, d_out, carry,
    ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih, d_b_ih,
    ln_hh, g_hh, a, mu_hh, rs_hh, d_g_hh, d_b_hh,
    d_ain, d_a, ta, gx, gh, has_mask, mask,
):  # fmt: skip  # pragma: no cover - jitted
    """:func:`gru_bwd_step` on the calling thread (no parallel launch, a cheaper compile)."""
    nb = acts.shape[1]
    nc = gx.shape[0]
    for c in range(nc):
        _gru_bwd_rows(
            c * nb // nc, (c + 1) * nb // nc, t, acts, hn, h_prev, dh, d_out, carry,
            ln_ih, g_ih, ain, mu_ih, rs_ih, d_g_ih[c], d_b_ih[c],
            ln_hh, g_hh, a, mu_hh, rs_hh, d_g_hh[c], d_b_hh[c],
            d_ain, d_a, ta, gx[c], gh[c], has_mask, mask,
        )  # fmt: skip
