"""Batch norm, training (batch statistics) and eval (running statistics), over any feature axis,
contiguous or channels_last: ``normkit::numba_batch_norm`` and ``normkit::numba_batch_norm_eval``.

Training, per feature ``c`` over the other axes (``m`` values): ``y = (x − μ)·r·w + b`` with the
biased variance, ``r = 1/√(var + ε)``; backward ``dx = w·r·(dy − mean(dy) − x̂·mean(dy·x̂))``.
Eval: ``y = (x − μ_run)·w/√(σ²_run + ε) + b``, an affine map whose backward is elementwise torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normkit._stats import Moments, merge_stacked
from normkit.backends.numba._custom_op import define, stats_norm_grad
from normkit.backends.numba._runtime import chunks, kernels, threads
from normkit.backends.numba._tensors import as_layout_of, is_channels_last, nd, numel, vector

__all__ = [
    "BATCH_NORM",
    "BATCH_NORM_EVAL",
    "batch_norm_eval",
    "batch_norm_eval_out",
    "batch_norm_train",
    "batch_norm_train_out",
]


def _views(x: Tensor, axis: int) -> tuple[str, Tensor, tuple[int, ...]]:
    """How the kernels see ``x``: ("rows", dense tensor, (M, C)) or ("acb", ..., (A, C, B))."""
    axis %= x.ndim
    c = x.shape[axis]
    if axis == 1 and is_channels_last(x):
        return "rows", x, (x.numel() // max(c, 1), c)
    xc = x.contiguous()
    a = numel(x.shape[:axis])
    b = numel(x.shape[axis + 1 :])
    if b == 1:
        return "rows", xc, (a, c)
    return "acb", xc, (a, c, b)


def _dense_view(t: Tensor, layout: str, shape: tuple[int, ...]) -> Tensor:
    """The kernel's view of a tensor laid out like the input (contiguous or channels_last)."""
    if layout == "rows" and is_channels_last(t):
        perm = (0, *range(2, t.ndim), 1)
        return t.permute(perm).reshape(shape)
    return t.view(shape)


def _like(x: Tensor, axis: int) -> Tensor:
    """An output laid out as the kernels write it: channels_last kept for axis 1, else dense."""
    if axis % x.ndim == 1 and is_channels_last(x):
        return torch.empty_like(x)
    return x.new_empty(x.shape)


# --------------------------------------------------------------------------- training


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
    out: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm: (y, mean, biased var, rstd), statistics per feature on ``axis``."""
    K = kernels("batch_norm")
    layout, xd, shape = _views(x, axis)
    c = shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    xv, yv = _dense_view(xd, layout, shape), _dense_view(y, layout, shape)
    w = vector(weight, c, 1.0, x.dtype)
    b = vector(bias, c, 0.0, x.dtype)
    mean = torch.empty(c, dtype=x.dtype)
    var = torch.empty(c, dtype=x.dtype)
    rstd = torch.empty(c, dtype=x.dtype)
    with threads(xv.numel()):
        if layout == "acb":
            K.bn_fwd_acb(nd(xv), nd(w), nd(b), eps, nd(yv), nd(mean), nd(var), nd(rstd))
        else:
            p = chunks(shape[0])
            cnt = torch.empty(p, dtype=torch.float64)
            mu_p = torch.empty(p, c, dtype=torch.float64)
            m2_p = torch.empty(p, c, dtype=torch.float64)
            K.bn_stats_rows(nd(xv), nd(cnt), nd(mu_p), nd(m2_p))
            mom = merge_stacked(Moments(cnt[:, None].expand_as(mu_p), mu_p, m2_p))
            v = mom.m2 / mom.count
            r = torch.rsqrt(v + eps)
            mean.copy_(mom.mean)
            var.copy_(v)
            rstd.copy_(r)
            sc = (w.double() * r).to(x.dtype)
            K.affine_rows(nd(xv), nd(mean), nd(sc), nd(b), nd(yv))
    return y, mean, var, rstd


def backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of training batch norm: (dx, dweight, dbias)."""
    K = kernels("batch_norm")
    layout, xd, shape = _views(x, axis)
    c = shape[1]
    dyd = as_layout_of(dy, xd)
    dx = torch.empty_like(xd)
    xv, dyv, dxv = (_dense_view(t, layout, shape) for t in (xd, dyd, dx))
    w = vector(weight, c, 1.0, x.dtype)
    dw = torch.empty(c, dtype=x.dtype)
    db = torch.empty(c, dtype=x.dtype)
    with threads(xv.numel()):
        if layout == "acb":
            K.bn_bwd_acb(nd(dyv), nd(xv), nd(w), nd(mean), nd(rstd), nd(dxv), nd(dw), nd(db))
        else:
            p = chunks(shape[0])
            s1p = torch.empty(p, c, dtype=torch.float64)
            s2p = torch.empty(p, c, dtype=torch.float64)
            K.bn_bwd_sums_rows(nd(dyv), nd(xv), nd(mean), nd(s1p), nd(s2p))
            s1, s2 = s1p.sum(0), s2p.sum(0)
            r, wd, cnt = rstd.double(), w.double(), shape[0]
            db.copy_(s1)
            dw.copy_(s2 * r)
            k1 = (wd * r).to(x.dtype)
            k2 = (wd * r**3 * s2 / cnt).to(x.dtype)
            k3 = (wd * r * s1 / cnt).to(x.dtype)
            K.bwd_apply_rows(nd(dyv), nd(xv), nd(mean), nd(k1), nd(k2), nd(k3), nd(dxv))
    return dx, dw, db


def _impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm: (y, mean, biased var, rstd), statistics per feature on ``axis``."""
    return forward(x, weight, bias, eps, axis)


def _fake(x, weight, bias, eps, axis):
    c = x.shape[axis % x.ndim]
    return _like(x, axis), x.new_empty(c), x.new_empty(c), x.new_empty(c)


def _backward_fake(dy, x, weight, mean, rstd, axis):
    c = x.shape[axis % x.ndim]
    return _like(x, axis), x.new_empty(c), x.new_empty(c)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weight, bias, _eps, axis = inputs
    _y, mean, var, rstd = output
    ctx.mark_non_differentiable(mean, var, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.layout, ctx.has_bias = axis, bias is not None


#: ``(x, weight, bias, eps, axis) -> (y, mean, biased var, rstd)``.
BATCH_NORM = define(
    "numba_batch_norm",
    _impl,
    _fake,
    _setup,
    stats_norm_grad,
    backward=backward,
    backward_fake=_backward_fake,
)


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, var, _ = BATCH_NORM(x, weight, bias, float(eps), int(axis))
    return y, mean, var


def batch_norm_train_out(x, weight, bias, eps, axis, *, out):
    with torch.no_grad():
        return forward(x, weight, bias, float(eps), int(axis), out=out)[:3]


# --------------------------------------------------------------------------- eval


def eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
    out: Sequence[Tensor] | None = None,
) -> Tensor:
    """Eval batch norm with the running statistics: y = (x − μ)·γ/√(σ² + ε) + β."""
    K = kernels("batch_norm")
    layout, xd, shape = _views(x, axis)
    c = shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    xv, yv = _dense_view(xd, layout, shape), _dense_view(y, layout, shape)
    w = vector(weight, c, 1.0, torch.float64)
    mu = running_mean.to(x.dtype).contiguous()
    sc = (w * torch.rsqrt(running_var.double() + eps)).to(x.dtype)
    b = vector(bias, c, 0.0, x.dtype)
    kernel = K.affine_acb if layout == "acb" else K.affine_rows
    with threads(xv.numel()):
        kernel(nd(xv), nd(mu), nd(sc), nd(b), nd(yv))
    return y


def _eval_impl(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    """Eval batch norm with the running statistics: y = (x − μ)·γ/√(σ² + ε) + β."""
    return eval_forward(x, running_mean, running_var, weight, bias, eps, axis)


def _eval_fake(x, running_mean, running_var, weight, bias, eps, axis):
    return _like(x, axis)


def _eval_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, rm, rv, weight, bias, eps, axis = inputs
    ctx.save_for_backward(x, rm, rv, weight)
    ctx.eps, ctx.axis, ctx.has_bias = eps, axis, bias is not None


def _eval_grad(ctx: Any, dy: Tensor | None, *, backward: Any = None) -> tuple:
    # Eval mode is an affine map per channel; its backward is plain elementwise torch.
    x, rm, rv, weight = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None, None, None
    axis = ctx.axis % x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    dims = [d for d in range(x.ndim) if d != axis]
    r = torch.rsqrt(rv.to(x.dtype) + ctx.eps).reshape(shape)
    w = weight.to(x.dtype).reshape(shape) if weight is not None else None
    dx = dy * (r * w if w is not None else r)
    gw = gb = None
    if weight is not None:
        gw = (dy * (x - rm.to(x.dtype).reshape(shape)) * r).sum(dims).to(weight.dtype)
    if ctx.has_bias:
        gb = dy.sum(dims)
    return dx, None, None, gw, gb, None, None


#: ``(x, running_mean, running_var, weight, bias, eps, axis) -> y``.
BATCH_NORM_EVAL = define("numba_batch_norm_eval", _eval_impl, _eval_fake, _eval_setup, _eval_grad)


def batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    return BATCH_NORM_EVAL(x, running_mean, running_var, weight, bias, float(eps), int(axis))


def batch_norm_eval_out(x, rm, rv, weight, bias, eps, axis, *, out):
    with torch.no_grad():
        return eval_forward(x, rm, rv, weight, bias, float(eps), int(axis), out=out)
