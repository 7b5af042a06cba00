"""The LN-LSTM and LN-GRU time loops on Numba kernels: one ``autograd.Function`` per layer and
direction.

Private, imported only when numba is installed (the optional extra ``normkit[fast]``); see
:func:`normkit.nn.recurrent._lstm_loop` for when it runs. Same idea as
:mod:`normkit.nn._recurrent_fused` (no recording in the forward, a hand-written backward), but:

* each time step issues only two calls: ``torch.mm`` for the recurrent projection (forward
  ``h W_hhᵀ``, backward ``d_a W_hh``) and *one* Numba kernel for everything else of the step
  (the layer norms with float64 statistics, the gate nonlinearities, the cell update; in the
  backward the layer-norm backwards, the gate derivatives and the state-gradient carry, with the
  LN gain/shift and bias gradients accumulated in float64 as it goes). The ``(T, …)`` buffers
  are turned into NumPy views once per call and the kernels index them by ``t``, so a step costs
  two dispatches instead of the ~8 forward / ~20 backward small torch ops of the torch path,
  whose dispatch overhead dominated;
* the input projection ``x W_ihᵀ`` is one matmul inside the Function, and its layer norm runs
  per step in the kernel (no separate normalized copy of the whole sequence);
* the backward keeps the gradients of ``x W_ihᵀ`` and ``h W_hhᵀ`` only for the last
  :data:`_CHUNK` steps (ring buffers) and turns each complete chunk into ``dx`` rows,
  ``dW_ih`` and ``dW_hh`` with one matmul each: no ``(T, B, G·H)`` gradient tensor is allocated
  (a fresh buffer of that size costs milliseconds of page faults).

The kernels split the batch rows over torch's thread budget
(:func:`normkit.backends.numba._runtime.threads`: one thread for small steps). CPU,
float32/float64 only; first derivatives (no double backward). Kernels compile on first use per
dtype (seconds) and are cached on disk like the numba backend's
(:func:`normkit.backends.numba.cache_dir`); :func:`warm_up` compiles them at once.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normkit.backends.numba import _runtime
from normkit.backends.numba._tensors import nd
from normkit.nn import _recurrent_numba_kernels as K

__all__ = ["numba_gru_direction", "numba_lstm_direction", "supports", "warm_up"]

_DTYPES = (torch.float32, torch.float64)
#: Steps per batched ``W_hh`` gradient matmul in the backward (a (CHUNK, B, 4H) ring buffer).
_CHUNK = 16


def _mask_arg(mask: Tensor | None) -> Tensor | None:
    """A ``(T, B[, 1])`` bool mask of valid steps as the kernels read it: ``(T, B)`` uint8."""
    return None if mask is None else mask.reshape(mask.shape[0], -1).to(torch.uint8).contiguous()


def _mask(mask: Tensor | None) -> Any:
    return np.ones((1, 1), np.uint8) if mask is None else nd(mask)


def _kernel(parallel: Any, serial: Any) -> Any:
    """The threaded step kernel when numba may use several threads, else its serial twin (no
    parallel launch per step, and only the serial one gets compiled for small problems)."""
    return parallel if numba.get_num_threads() > 1 else serial


def _parts(rows: int) -> int:
    """Row blocks of the backward kernel (one per thread; each has its own gradient partials)."""
    return max(1, min(rows, numba.get_num_threads()))


def supports(x: Tensor) -> bool:
    """Whether the kernels can run the loop for input ``x``: a CPU float32/float64 tensor."""
    return x.device.type == "cpu" and x.dtype in _DTYPES


def _opt(t: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    """The NumPy view of an optional parameter, or a placeholder of the same rank (unused)."""
    if t is None:
        return np.ones(shape, dtype=np.float32 if dtype == torch.float32 else np.float64)
    return nd(t.contiguous())


def _chunk_grads(
    lo: int,
    k: int,
    rev: bool,
    x: Tensor,
    w_ih: Tensor,
    out: Tensor,
    h0: Tensor,
    d_ain: Tensor,
    d_a: Tensor,
    d_x: Tensor | None,
    d_w_ih: Tensor | None,
    d_w_hh: Tensor | None,
) -> None:
    """The gradients a complete chunk of steps ``lo … lo + k − 1`` contributes (slots 0 … k − 1
    of ``d_ain``/``d_a``): ``dx`` rows, ``dW_ih += d_ainᵀ x``, ``dW_hh += d_aᵀ h_prev``."""
    B = x.shape[1]
    gh = d_ain.shape[2] * d_ain.shape[3]
    d_in = d_ain[:k].view(k * B, gh)
    rows = slice(lo, lo + k)
    if d_x is not None:
        torch.mm(d_in, w_ih.detach(), out=d_x[rows].view(k * B, x.shape[2]))
    if d_w_ih is not None:
        d_w_ih.addmm_(d_in.t(), x[rows].reshape(k * B, x.shape[2]))
    if d_w_hh is not None:
        # h entering step t: out[t − 1] (h0 at t = 0) forward, out[t + 1] (h0 at T − 1) reverse
        T = out.shape[0]
        if rev:
            parts = (out[lo + 1 : lo + k + 1],) + ((h0[None],) if lo + k == T else ())
        else:
            parts = ((h0[None],) if lo == 0 else ()) + (out[max(lo - 1, 0) : lo + k - 1],)
        h_prev = parts[0] if len(parts) == 1 else torch.cat(parts)
        d_w_hh.addmm_(d_a[:k].reshape(k * B, gh).t(), h_prev.reshape(k * B, out.shape[2]))


class _NumbaLSTM(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w_ih: Tensor,
        g_ih: Tensor | None,
        bias: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        g_hh: Tensor | None,
        w_c: Tensor | None,
        b_c: Tensor | None,
        eps: float,
        reverse: bool,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T, B, size = x.shape
        G, H = w_hh.shape[0] // w_hh.shape[1], w_hh.shape[1]
        dt = x.dtype
        new = x.new_empty
        ain = torch.mm(x.view(T * B, size), w_ih.t()).view(T, B, G, H)  # x W_ihᵀ, all steps
        ln_ih, ln_hh, ln_cell = g_ih is not None, g_hh is not None, w_c is not None
        h0, c0 = h0.contiguous(), c0.contiguous()
        a_hh = new(T if ln_hh else 1, B, G, H)  # h W_hhᵀ: kept per step only under LN
        acts = new(T, B, G, H)  # σ(i), σ(f), tanh(g), σ(o)
        c_all, tc, out = new(T, B, H), new(T, B, H), new(T, B, H)  # c_t, tanh(LN(c_t)), h_t

        def stats(on: bool, g: int) -> tuple[Tensor, Tensor]:
            return (new(T, B, g), new(T, B, g)) if on else (new(1, 1, 1), new(1, 1, 1))

        mu_ih, rs_ih = stats(ln_ih, G)
        mu_hh, rs_hh = stats(ln_hh, G)
        mu_c, rs_c = stats(ln_cell, 1)
        ain_n, a_n, acts_n, c_n, tc_n, out_n, c0_n = map(nd, (ain, a_hh, acts, c_all, tc, out, c0))
        h0_n, mask_n = nd(h0), _mask(mask)
        st_n = tuple(map(nd, (mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c)))
        gi_n, bias_n, gh_n = (_opt(v, (1, 1), dt) for v in (g_ih, bias, g_hh))
        wc_n, bc_n = _opt(w_c, (1,), dt), _opt(b_c, (1,), dt)
        w_t = w_hh.detach().t()
        steps = range(T - 1, -1, -1) if reverse else range(T)
        prev = 1 if reverse else -1
        h = h0
        with _runtime.threads(B * G * H):
            P = _parts(B)
            step_fwd = _kernel(K.lstm_fwd_step, K.lstm_fwd_step_serial)
            for n, t in enumerate(steps):
                ta = t if ln_hh else 0
                torch.mm(h, w_t, out=a_hh[ta].view(B, G * H))
                step_fwd(
                    t, ain_n, ln_ih, gi_n, bias is not None, bias_n, a_n, ta, ln_hh, gh_n,
                    c0_n if n == 0 else c_n[t + prev], ln_cell, wc_n, bc_n, eps,
                    acts_n, c_n, tc_n, out_n, *st_n, mask is not None, mask_n,
                    h0_n if n == 0 else out_n[t + prev], P,
                )  # fmt: skip
                h = out[t]
        ctx.reverse, ctx.flags, ctx.mask = reverse, (ln_ih, ln_hh, ln_cell), mask
        ctx.save_for_backward(
            x, w_ih, ain, g_ih, w_hh, g_hh, w_c, h0, c0, out, c_all, acts, tc, a_hh,
            mu_ih, rs_ih, mu_hh, rs_hh, mu_c, rs_c,
        )  # fmt: skip
        last = steps[-1]
        return out, out[last].clone(), c_all[last].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_hT: Tensor, d_cT: Tensor) -> tuple[Tensor | None, ...]:
        (x, w_ih, ain, g_ih, w_hh, g_hh, w_c, h0, c0, out, c_all, acts, tc, a_hh,
         *stats) = ctx.saved_tensors  # fmt: skip
        T, B, G, H = acts.shape
        dt = acts.dtype
        ln_ih, ln_hh, ln_cell = ctx.flags
        d_out = d_out.contiguous()
        dh = d_hT.to(dt, copy=True).contiguous()  # gradient reaching h_t via the recurrence
        dc = d_cT.to(dt, copy=True).contiguous()  # carried gradient of c
        # Gradients of x W_ihᵀ and h W_hhᵀ for the last _CHUNK steps only (one buffer when no
        # site has a layer norm: then both equal the pre-activation gradient). When a chunk is
        # complete, dx, dW_ih and dW_hh take it in one matmul each: no (T, B, 4H) gradient is
        # allocated, and the chunk is still in cache.
        nk = min(_CHUNK, T)
        same = not (ln_ih or ln_hh)
        d_ain = acts.new_empty(nk, B, G, H)
        d_a = d_ain if same else acts.new_empty(nk, B, G, H)
        need = ctx.needs_input_grad
        d_x = x.new_empty(x.shape) if need[0] else None
        d_w_ih = w_ih.new_zeros(w_ih.shape) if need[1] else None
        d_w_hh = w_hh.new_zeros(w_hh.shape) if need[6] else None
        f64 = np.float64
        with _runtime.threads(B * G * H):
            P = _parts(B)
            step_bwd = _kernel(K.lstm_bwd_step, K.lstm_bwd_step_serial)
            d_g_ih = np.zeros((P, G, H) if ln_ih else (P, 1, 1), f64)
            d_g_hh = np.zeros((P, G, H) if ln_hh else (P, 1, 1), f64)
            d_bias = np.zeros((P, G, H), f64)
            d_w_c = np.zeros((P, 2, H) if ln_cell else (P, 2, 1), f64)  # rows: gain, shift
            acts_n, tc_n, c_n, c0_n, ain_n, a_n = map(nd, (acts, tc, c_all, c0, ain, a_hh))
            dh_n, dout_n, dc_n, dain_n, da_n = map(nd, (dh, d_out, dc, d_ain, d_a))
            mi_n, ri_n, mh_n, rh_n, mc_n, rc_n = map(nd, stats)
            tmp, dg = np.empty((P, 2, H), acts_n.dtype), np.empty((P, G, H), acts_n.dtype)
            masked, mask_n = ctx.mask is not None, _mask(ctx.mask)
            carry = torch.zeros_like(dh) if masked else dh.new_zeros(1, 1)
            carry_n = nd(carry)
            gi_n, gh_n = _opt(g_ih, (1, 1), dt), _opt(g_hh, (1, 1), dt)
            wc_n = _opt(None if w_c is None else w_c.view(1, H), (1, 1), dt)
            rev = ctx.reverse
            first = T - 1 if rev else 0  # the step that starts from (h0, c0)
            prev = 1 if rev else -1
            w = w_hh.detach()
            for t in range(T) if rev else range(T - 1, -1, -1):
                ta = t % _CHUNK
                step_bwd(
                    t, acts_n, tc_n, c_n, c0_n if t == first else c_n[t + prev], dh_n, dout_n, dc_n,
                    ln_cell, wc_n, mc_n, rc_n, d_w_c,
                    ln_hh, gh_n, a_n, mh_n, rh_n, d_g_hh,
                    ln_ih, gi_n, ain_n, mi_n, ri_n, d_g_ih, d_bias,
                    dain_n, da_n, ta, tmp, dg, masked, mask_n, carry_n,
                )  # fmt: skip
                if masked:  # padded rows pass their h-gradient on whole
                    torch.addmm(carry, d_a[ta].view(B, G * H), w, out=dh)
                else:
                    torch.mm(d_a[ta].view(B, G * H), w, out=dh)
                lo = t - ta  # the chunk of steps lo … lo + k − 1 is complete:
                k = min(_CHUNK, T - lo)
                if t != (lo + k - 1 if rev else lo):
                    continue
                _chunk_grads(lo, k, rev, x, w_ih, out, h0, d_ain, d_a, d_x, d_w_ih, d_w_hh)

        def grad(v: Any, on: bool) -> Tensor | None:
            return torch.from_numpy(v.sum(0)).to(dt) if on else None

        return (
            d_x, d_w_ih, grad(d_g_ih, ln_ih), grad(d_bias, need[3]), dh, dc, d_w_hh,
            grad(d_g_hh, ln_hh), grad(d_w_c[:, 0], ln_cell), grad(d_w_c[:, 1], ln_cell), None, None,
            None,
        )  # fmt: skip


def numba_lstm_direction(
    x: Tensor,
    w_ih: Tensor,
    g_ih: Tensor | None,
    bias: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    g_hh: Tensor | None,
    w_c: Tensor | None,
    b_c: Tensor | None,
    eps: float,
    reverse: bool,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LN-LSTM over ``x`` ``(T, B, input_size)``: ``(output (T, B, H), h_T, c_T)``.

    The input part is done here too: ``x W_ihᵀ`` (``w_ih`` ``(4H, input_size)``) as one matmul,
    its layer norm per step inside the fused kernel; ``g_ih`` ``(4, H)`` is that layer norm's
    gain (``None``: no layer norm there), ``bias`` ``(4, H)`` the summed ``b_ih + b_hh``
    (``None``: no bias); ``g_hh`` ``(4, H)`` the recurrent layer-norm gain (``None``: off);
    ``w_c``/``b_c`` the cell-state layer norm (``None``: off). ``mask`` ``(T, B[, 1])`` bool
    marks the valid steps of padded sequences: on an invalid step the state is carried unchanged
    (the output there is that carried ``h``; padded-sequence callers drop it), as
    :func:`normkit.nn._recurrent_core.run_direction`. ``T ≥ 1``; CPU float32/float64
    (:func:`supports`).
    """
    return _NumbaLSTM.apply(
        x.contiguous(), w_ih, g_ih, bias, h0, c0, w_hh, g_hh, w_c, b_c, float(eps), reverse,
        _mask_arg(mask),
    )  # fmt: skip


class _NumbaGRU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w_ih: Tensor,
        g_ih: Tensor | None,
        b_ih: Tensor | None,
        h0: Tensor,
        w_hh: Tensor,
        g_hh: Tensor | None,
        b_hh: Tensor | None,
        eps: float,
        reverse: bool,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        T, B, size = x.shape
        G, H = w_hh.shape[0] // w_hh.shape[1], w_hh.shape[1]
        dt = x.dtype
        new = x.new_empty
        ln_ih, ln_hh = g_ih is not None, g_hh is not None
        h0 = h0.contiguous()
        ain = torch.mm(x.view(T * B, size), w_ih.t()).view(T, B, G, H)  # x W_ihᵀ, all steps
        a_hh = new(T, B, G, H)  # h W_hhᵀ per step
        acts = new(T, B, G, H)  # r, z, n
        hn, out = new(T, B, H), new(T, B, H)  # the h part of n's pre-activation, h_t

        def stats(on: bool) -> tuple[Tensor, Tensor]:
            return (new(T, B, G), new(T, B, G)) if on else (new(1, 1, 1), new(1, 1, 1))

        mu_ih, rs_ih = stats(ln_ih)
        mu_hh, rs_hh = stats(ln_hh)
        ain_n, a_n, acts_n, hn_n, out_n, h0_n = map(nd, (ain, a_hh, acts, hn, out, h0))
        st_n = tuple(map(nd, (mu_ih, rs_ih, mu_hh, rs_hh)))
        gi_n, gh_n, bi_n, bh_n = (_opt(v, (1, 1), dt) for v in (g_ih, g_hh, b_ih, b_hh))
        w_t = w_hh.detach().t()
        steps = range(T - 1, -1, -1) if reverse else range(T)
        prev = 1 if reverse else -1
        h = h0
        with _runtime.threads(B * G * H):
            P = _parts(B)
            step_fwd = _kernel(K.gru_fwd_step, K.gru_fwd_step_serial)
            for n, t in enumerate(steps):
                torch.mm(h, w_t, out=a_hh[t].view(B, G * H))
                step_fwd(
                    t, ain_n, ln_ih, gi_n, a_n, ln_hh, gh_n, b_ih is not None, bi_n, bh_n,
                    h0_n if n == 0 else out_n[t + prev], eps, acts_n, hn_n, out_n, *st_n,
                    mask is not None, _mask(mask), P,
                )  # fmt: skip
                h = out[t]
        ctx.reverse, ctx.flags, ctx.mask = reverse, (ln_ih, ln_hh), mask
        ctx.save_for_backward(
            x, w_ih, ain, g_ih, w_hh, g_hh, h0, out, acts, hn, a_hh, mu_ih, rs_ih, mu_hh, rs_hh
        )
        return out, out[steps[-1]].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_hT: Tensor) -> tuple[Tensor | None, ...]:
        (x, w_ih, ain, g_ih, w_hh, g_hh, h0, out, acts, hn, a_hh,
         *stats) = ctx.saved_tensors  # fmt: skip
        T, B, G, H = acts.shape
        dt = acts.dtype
        ln_ih, ln_hh = ctx.flags
        d_out = d_out.contiguous()
        dh = d_hT.to(dt, copy=True).contiguous()  # gradient reaching h_t via the recurrence
        carry = torch.empty_like(dh)  # z·dh_t: the direct part of the gradient of h_{t−1}
        nk = min(_CHUNK, T)
        d_ain, d_a = acts.new_empty(nk, B, G, H), acts.new_empty(nk, B, G, H)
        need = ctx.needs_input_grad
        d_x = x.new_empty(x.shape) if need[0] else None
        d_w_ih = w_ih.new_zeros(w_ih.shape) if need[1] else None
        d_w_hh = w_hh.new_zeros(w_hh.shape) if need[5] else None
        f64 = np.float64
        with _runtime.threads(B * G * H):
            P = _parts(B)
            step_bwd = _kernel(K.gru_bwd_step, K.gru_bwd_step_serial)
            d_g_ih = np.zeros((P, G, H) if ln_ih else (P, 1, 1), f64)
            d_g_hh = np.zeros((P, G, H) if ln_hh else (P, 1, 1), f64)
            d_b_ih, d_b_hh = np.zeros((P, G, H), f64), np.zeros((P, G, H), f64)
            acts_n, hn_n, out_n, h0_n, ain_n, a_n = map(nd, (acts, hn, out, h0, ain, a_hh))
            dh_n, dout_n, carry_n, dain_n, da_n = map(nd, (dh, d_out, carry, d_ain, d_a))
            mi_n, ri_n, mh_n, rh_n = map(nd, stats)
            gx, gh = np.empty((P, G, H), acts_n.dtype), np.empty((P, G, H), acts_n.dtype)
            gi_n, gh_n = _opt(g_ih, (1, 1), dt), _opt(g_hh, (1, 1), dt)
            rev = ctx.reverse
            first = T - 1 if rev else 0
            prev = 1 if rev else -1
            w = w_hh.detach()
            for t in range(T) if rev else range(T - 1, -1, -1):
                ta = t % _CHUNK
                step_bwd(
                    t, acts_n, hn_n, h0_n if t == first else out_n[t + prev], dh_n, dout_n,
                    carry_n, ln_ih, gi_n, ain_n, mi_n, ri_n, d_g_ih, d_b_ih,
                    ln_hh, gh_n, a_n, mh_n, rh_n, d_g_hh, d_b_hh, dain_n, da_n, ta, gx, gh,
                    ctx.mask is not None, _mask(ctx.mask),
                )  # fmt: skip
                torch.addmm(carry, d_a[ta].view(B, G * H), w, out=dh)
                lo = t - ta
                k = min(_CHUNK, T - lo)
                if t != (lo + k - 1 if rev else lo):
                    continue
                _chunk_grads(
                    lo, k, rev, x, w_ih, out, h0, d_ain, d_a, d_x, d_w_ih, d_w_hh
                )  # fmt: skip

        def grad(v: Any, on: bool) -> Tensor | None:
            return torch.from_numpy(v.sum(0)).to(dt) if on else None

        return (
            d_x, d_w_ih, grad(d_g_ih, ln_ih), grad(d_b_ih, need[3]), dh, d_w_hh,
            grad(d_g_hh, ln_hh), grad(d_b_hh, need[7]), None, None, None,
        )  # fmt: skip


def numba_gru_direction(
    x: Tensor,
    w_ih: Tensor,
    g_ih: Tensor | None,
    b_ih: Tensor | None,
    h0: Tensor,
    w_hh: Tensor,
    g_hh: Tensor | None,
    b_hh: Tensor | None,
    eps: float,
    reverse: bool,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """LN-GRU over ``x`` ``(T, B, input_size)``: ``(output (T, B, H), h_T)``.

    ``w_ih`` ``(3H, input_size)``, ``w_hh`` ``(3H, H)``; ``g_ih``/``g_hh`` ``(3, H)`` the
    layer-norm gains of the two sites (``None``: off); ``b_ih``/``b_hh`` ``(3, H)`` torch's
    biases (``b_hn`` inside the reset gate) or both ``None``. ``mask``: valid steps, as for
    :func:`numba_lstm_direction`. ``T ≥ 1``; CPU float32/float64 (:func:`supports`).
    """
    return _NumbaGRU.apply(
        x.contiguous(), w_ih, g_ih, b_ih, h0, w_hh, g_hh, b_hh, float(eps), reverse, _mask_arg(mask)
    )


def warm_up(dtypes: tuple[torch.dtype, ...] = _DTYPES) -> None:
    """Compile (first time) or load from the disk cache the LSTM and GRU step kernels: the
    serial ones (small steps) and, when torch may use several threads, the threaded ones."""
    hidden = 128  # rows x 3 gates x 128 ≥ SERIAL_NUMEL: a step large enough for threads
    rows = -(-_runtime.SERIAL_NUMEL // (3 * hidden))
    for dt in dtypes:
        for batch, size in ((1, 3), (rows, hidden)):
            for ln in (False, True):
                _warm(dt, batch, size, ln)


def _warm(dt: torch.dtype, batch: int, size: int, ln: bool) -> None:
    def p(*shape: int, fill: float = 0.0) -> Tensor:
        return torch.full(shape, fill, dtype=dt, requires_grad=True)

    x, h0 = p(2, batch, size), torch.zeros(batch, size, dtype=dt)
    w4, g4 = p(4 * size, size), (p(4, size, fill=1.0) if ln else None)
    wc, bc = (p(size, fill=1.0), p(size)) if ln else (None, None)
    out, h, c = numba_lstm_direction(x, w4, g4, g4, h0, h0, w4, g4, wc, bc, 1e-5, False)
    (out.sum() + h.sum() + c.sum()).backward()
    w3, g3 = p(3 * size, size), (p(3, size, fill=1.0) if ln else None)
    out, h = numba_gru_direction(x, w3, g3, g3, h0, w3, g3, g3, 1e-5, False)
    (out.sum() + h.sum()).backward()
