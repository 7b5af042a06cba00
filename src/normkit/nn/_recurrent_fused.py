"""The fused LN-LSTM time loop: one ``autograd.Function`` per layer and direction.

Private. The autograd loop of :func:`normkit.nn._recurrent_core.run_direction` records ~12 graph
nodes per time step, and the backward walks them one by one; on CPU that bookkeeping costs as
much as the arithmetic at RNN sizes. Here the forward runs the same math without recording
(writing into preallocated ``(T, …)`` buffers) and the backward is written out by hand:

* the per-step work is only what the recurrence forces (the gate derivatives, two layer-norm
  backwards, one ``(B, 4H) @ (4H, H)`` matmul);
* every weight gradient is one batched op over all steps after the loop: ``dW_hh`` is a single
  ``(4H, T·B) @ (T·B, H)`` matmul, the layer-norm gains/shifts one reduction each, and the
  gradient of the input part ``xg`` (hence ``W_ih``, its layer norm and the biases, via ordinary
  autograd outside) is the stacked gate gradients.

The layer norms are the torch backend's kernel (``torch.native_layer_norm``, the op behind
``F.layer_norm``, which also returns the mean and ``1/σ`` the backward needs) and its backward
(``aten.native_layer_norm_backward``); the caller uses this path only when the normkit
``layer_norm`` backend resolves to ``torch`` for float32/float64 inputs. Same results as the
autograd loop up to rounding; first derivatives only (no double backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["fused_lstm_direction"]

_ln_backward = torch.ops.aten.native_layer_norm_backward


class _FusedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        xg: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        g_hh: Tensor | None,
        w_c: Tensor | None,
        b_c: Tensor | None,
        eps: float,
        reverse: bool,
        ln_cell: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T, B, G, H = xg.shape
        new = xg.new_empty
        ln_hh = g_hh is not None
        c_all = new(T, B, H)  # c_t (input of the cell layer norm)
        acts = new(T, B, G, H)  # σ(i), σ(f), tanh(g), σ(o)
        tc = new(T, B, H)  # tanh(LN(c_t))
        out = new(T, B, H)
        a_hh = new(T, B, G, H) if ln_hh else None  # W_hh h (layer-norm input)
        mu_hh = new(T, B, G, 1) if ln_hh else None
        rs_hh = new(T, B, G, 1) if ln_hh else None
        mu_c = new(T, B, 1) if ln_cell else None
        rs_c = new(T, B, 1) if ln_cell else None
        h, c = h0, c0
        w_t = w_hh.t()
        for t in range(T - 1, -1, -1) if reverse else range(T):
            if ln_hh:
                assert a_hh is not None and mu_hh is not None and rs_hh is not None
                assert g_hh is not None
                a = a_hh[t]
                torch.mm(h, w_t, out=a.view(B, G * H))
                y, mu_hh[t], rs_hh[t] = torch.native_layer_norm(a, (H,), None, None, eps)
                gates = torch.addcmul(xg[t], y, g_hh)
            else:
                gates = xg[t] + torch.mm(h, w_t).view(B, G, H)
            act = acts[t]
            torch.sigmoid(gates, out=act)
            torch.tanh(gates[:, 2], out=act[:, 2])
            c = torch.addcmul(act[:, 1] * c, act[:, 0], act[:, 2])
            c_all[t] = c
            if ln_cell:
                assert mu_c is not None and rs_c is not None
                cn, mu_c[t], rs_c[t] = torch.native_layer_norm(c, (H,), w_c, b_c, eps)
            else:
                cn = c
            torch.tanh(cn, out=tc[t])
            h = torch.mul(act[:, 3], tc[t], out=out[t])
        ctx.reverse, ctx.ln_cell, ctx.ln_hh = reverse, ln_cell, ln_hh
        ctx.save_for_backward(
            w_hh, g_hh, w_c, b_c, h0, c0, out, c_all, acts, tc, a_hh, mu_hh, rs_hh, mu_c, rs_c,
        )  # fmt: skip
        return out, h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_hT: Tensor, d_cT: Tensor) -> tuple[Tensor | None, ...]:
        (w_hh, g_hh, w_c, b_c, h0, c0, out, c_all, acts, tc, a_hh, mu_hh, rs_hh,
         mu_c, rs_c) = ctx.saved_tensors  # fmt: skip
        T, B, G, H = acts.shape
        ln_cell, ln_hh = ctx.ln_cell, ctx.ln_hh
        d_gates = torch.empty_like(acts)  # d(pre-activation) = dxg
        d_a = torch.empty_like(acts) if ln_hh else d_gates  # d(W_hh h)
        d_cn = torch.empty_like(tc) if ln_cell else None
        dh, dc = d_hT.clone(), d_cT.clone()
        first = T - 1 if ctx.reverse else 0  # the step that starts from (h0, c0)
        prev = 1 if ctx.reverse else -1  # index offset of the step before t
        for t in range(T) if ctx.reverse else range(T - 1, -1, -1):
            i, f, g, o = acts[t].unbind(1)
            dh = dh + d_out[t]
            tct = tc[t]
            d_tc = dh * o
            dcn = d_tc - d_tc * tct * tct  # through tanh
            if ln_cell:
                assert d_cn is not None
                d_cn[t] = dcn
                dcn = _ln_backward(
                    dcn, c_all[t], (H,), mu_c[t], rs_c[t], w_c, b_c, (True, False, False)
                )[0]
            dc = dc + dcn
            dg = d_gates[t]
            torch.mul(dc * g, i - i * i, out=dg[:, 0])
            c_prev = c0 if t == first else c_all[t + prev]
            torch.mul(dc * c_prev, f - f * f, out=dg[:, 1])
            torch.mul(dc * i, 1 - g * g, out=dg[:, 2])
            torch.mul(dh * tct, o - o * o, out=dg[:, 3])
            dc = dc * f
            if ln_hh:
                d_a[t] = _ln_backward(
                    dg * g_hh, a_hh[t], (H,), mu_hh[t], rs_hh[t], None, None, (True, False, False)
                )[0]
            dh = torch.mm(d_a[t].view(B, G * H), w_hh)
        da2 = d_a.view(T * B, G * H)
        # h entering each step: (h0, out[0..T-2]) forward, (out[1..T-1], h0) reverse
        parts = (out[1:], h0[None]) if ctx.reverse else (h0[None], out[:-1])
        h_prev = torch.cat(parts).view(T * B, H)
        d_w_hh = torch.mm(da2.t(), h_prev)
        d_g_hh = None
        if ln_hh:  # Σ dγ-grad ⊙ x̂, x̂ rebuilt from the saved statistics in one batched op
            d_g_hh = (d_gates * ((a_hh - mu_hh) * rs_hh)).sum((0, 1))
        d_w_c = d_b_c = None
        if ln_cell:
            assert d_cn is not None
            _, d_w_c, d_b_c = _ln_backward(
                d_cn, c_all, (H,), mu_c, rs_c, w_c, b_c, (False, True, True)
            )
        return d_gates, dh, dc, d_w_hh, d_g_hh, d_w_c, d_b_c, None, None, None


def fused_lstm_direction(
    xg: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    g_hh: Tensor | None,
    w_c: Tensor | None,
    b_c: Tensor | None,
    eps: float,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """LN-LSTM over the input part ``xg`` ``(T, B, 4, H)``: ``(output (T,B,H), h_T, c_T)``.

    ``g_hh`` ``(4, H)`` is the recurrent layer-norm gain (``None``: no layer norm there);
    ``w_c``/``b_c`` the cell-state layer norm (``None``: off). No padding mask.
    """
    return _FusedLSTM.apply(
        xg.contiguous(), h0, c0, w_hh, g_hh, w_c, b_c, eps, reverse, w_c is not None
    )
