"""Layer norm and RMS norm over rows of the trailing dims (with the fused residual add of
:mod:`normkit.backends.numba.residual`): one custom op, ``normkit::numba_layer_norm``.

Forward per row of ``n`` elements (``s = x + residual`` when fused, else ``s = x``):
``y = (s − μ)·r·w + b`` with ``r = 1/√(var + ε)`` (RMS norm: μ = 0, ``var = mean(s²)``, no ``b``).
Backward: ``dx = r·(g − mean(g) − ŝ·mean(g·ŝ))``, ``g = dy·w``, ``ŝ = (s − μ)·r`` (no ``mean(g)``
term for RMS norm), plus the gradient of the fused sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normkit.backends.numba._custom_op import define
from normkit.backends.numba._runtime import chunks, kernels, threads
from normkit.backends.numba._tensors import column_sum, nd, numel, rows, vector

__all__ = ["LAYER_NORM", "layer_norm", "layer_norm_out", "rms_norm", "rms_norm_out"]


def forward(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    n: int,
    eps: float,
    centered: bool,
    out: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, s, mean, rstd) with s = x + residual (or x), LayerNorm/RMSNorm over rows of n."""
    K = kernels("layer_norm")
    x2 = rows(x, n)
    add = residual is not None
    r2 = rows(residual, n) if residual is not None else x2
    if out is not None:
        y = out[0]
        s = out[1] if add else x
    else:
        y = torch.empty(x.shape, dtype=x.dtype)
        s = torch.empty(x.shape, dtype=x.dtype) if add else x
    m = x2.shape[0]
    mean = torch.empty(m, dtype=x.dtype)
    rstd = torch.empty(m, dtype=x.dtype)
    w = vector(weight, n, 1.0, x.dtype)
    y2, s2 = y.view(-1, n), (s.view(-1, n) if add else x2)
    b = vector(bias, n, 0.0, x.dtype)
    with threads(x2.numel()):
        if centered:
            K.ln_fwd(nd(x2), nd(r2), add, nd(w), nd(b), eps, nd(y2), nd(s2), nd(mean), nd(rstd))
        else:
            K.rms_fwd(nd(x2), nd(r2), add, nd(w), eps, nd(y2), nd(s2), nd(rstd))
    if not centered:
        mean.zero_()
    return y, s, mean, rstd


def backward(
    dy: Tensor,
    ds: Tensor | None,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    n: int,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the layer norm op (``x`` is the normalised input, i.e. the sum)."""
    K = kernels("layer_norm")
    x2 = rows(x, n)
    dy2 = rows(dy, n)
    m = x2.shape[0]
    with threads(x2.numel()):
        p = chunks(m)
    dx = torch.empty(x.shape, dtype=x.dtype)
    # Partials are zeroed inside the kernel and summed by NumPy (one thread): a torch op here
    # would wake torch's OpenMP pool while numba's still spins, costing milliseconds.
    dwp = torch.empty(p, n, dtype=x.dtype)
    dbp = torch.empty(p, n, dtype=x.dtype)
    w = vector(weight, n, 1.0, x.dtype)
    ds2 = rows(ds, n) if ds is not None else dy2
    with threads(x2.numel()):
        K.ln_bwd(
            nd(dy2),
            nd(x2),
            nd(w),
            nd(mean),
            nd(rstd),
            centered,
            ds is not None,
            nd(ds2),
            nd(dx.view(-1, n)),
            nd(dwp),
            nd(dbp),
        )
    return dx, column_sum(dwp), column_sum(dbp)


def _impl(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    n: int,
    eps: float,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused (add +) LayerNorm/RMSNorm forward: returns (y, x + residual or empty, mean, rstd)."""
    y, s, mean, rstd = forward(x, residual, weight, bias, n, eps, centered)
    if residual is None:
        s = x.new_empty(0)
    return y, s, mean, rstd


def _fake(x, residual, weight, bias, n, eps, centered):
    m = x.numel() // n
    s = x.new_empty(x.shape) if residual is not None else x.new_empty(0)
    return x.new_empty(x.shape), s, x.new_empty(m), x.new_empty(m)


def _backward_fake(dy, ds, x, weight, mean, rstd, n, centered):
    return x.new_empty(x.shape), x.new_empty(n), x.new_empty(n)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, residual, weight, bias, n, _eps, centered = inputs
    _y, s, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.n, ctx.centered, ctx.add = n, centered, residual is not None
    ctx.has_bias = bias is not None


def _grad(
    ctx: Any, dy: Tensor | None, ds: Tensor | None, _dm: Any, _dr: Any, *, backward: Any
) -> tuple:
    src, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(src)
    ds = ds if ctx.add else None
    dx, dw, db = backward(dy.contiguous(), ds, src, weight, mean, rstd, ctx.n, ctx.centered)
    gw = dw.reshape(weight.shape).to(weight.dtype) if weight is not None else None
    gb = db.to(weight.dtype if weight is not None else db.dtype) if ctx.has_bias else None
    return dx, (dx if ctx.add else None), gw, gb, None, None, None


#: ``(x, residual, weight, bias, n, eps, centered) -> (y, x + residual or empty, mean, rstd)``.
LAYER_NORM = define(
    "numba_layer_norm",
    _impl,
    _fake,
    _setup,
    _grad,
    backward=backward,
    backward_fake=_backward_fake,
)


def flat(t: Tensor | None) -> Tensor | None:
    """A weight or bias as the op takes it: flattened to the row length."""
    return t.reshape(-1) if t is not None else None


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    n = numel(normalized_shape)
    return LAYER_NORM(x, None, flat(weight), flat(bias), n, float(eps), True)[0]


def rms_norm(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> Tensor:
    n = numel(normalized_shape)
    return LAYER_NORM(x, None, flat(weight), None, n, float(eps), False)[0]


def layer_norm_out(x, normalized_shape, weight, bias, eps, *, out):
    n = numel(normalized_shape)
    with torch.no_grad():
        return forward(x, None, weight, bias, n, float(eps), True, out=out)[0]


def rms_norm_out(x, normalized_shape, weight, eps, *, out):
    n = numel(normalized_shape)
    with torch.no_grad():
        return forward(x, None, weight, None, n, float(eps), False, out=out)[0]
