"""Group norm and instance norm (group norm with one channel per group), contiguous or
channels_last: one custom op, ``normkit::numba_group_norm``.

Per sample and group of ``m`` values: ``y = (x − μ)·r·w_c + b_c``, ``r = 1/√(var + ε)`` (biased
variance); backward ``dx = r·(g − mean(g) − x̂·mean(g·x̂))`` over the group, ``g = dy·w_c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normkit.backends.numba._custom_op import define, stats_norm_grad
from normkit.backends.numba._runtime import kernels, threads
from normkit.backends.numba._tensors import as_layout_of, column_sum, is_channels_last, nd, vector

__all__ = ["GROUP_NORM", "group_norm", "group_norm_out", "instance_norm"]


def _views(x: Tensor) -> tuple[bool, Tensor, tuple[int, int, int]]:
    """(channels_last?, dense tensor, kernel shape (N, C, S) or (N, S, C))."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(n * c, 1)
    if is_channels_last(x):
        return True, x, (n, s, c)
    return False, x.contiguous(), (n, c, s)


def _view(t: Tensor, cl: bool, shape: tuple[int, int, int]) -> Tensor:
    if cl:
        return t.permute(0, *range(2, t.ndim), 1).reshape(shape)
    return t.view(shape)


def _like(x: Tensor) -> Tensor:
    return torch.empty_like(x) if is_channels_last(x) else x.new_empty(x.shape)


def forward(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    out: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm forward: (y, mean (N, G), rstd (N, G))."""
    K = kernels("group_norm")
    cl, xd, shape = _views(x)
    c = x.shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    w = vector(weight, c, 1.0, x.dtype)
    b = vector(bias, c, 0.0, x.dtype)
    mean = torch.empty(x.shape[0], groups, dtype=x.dtype)
    rstd = torch.empty(x.shape[0], groups, dtype=x.dtype)
    kernel = K.gn_fwd_cl if cl else K.gn_fwd
    with threads(xd.numel()):
        kernel(
            nd(_view(xd, cl, shape)),
            groups,
            nd(w),
            nd(b),
            eps,
            nd(_view(y, cl, shape)),
            nd(mean),
            nd(rstd),
        )
    return y, mean, rstd


def backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of group norm: (dx, dweight, dbias)."""
    K = kernels("group_norm")
    cl, xd, shape = _views(x)
    c = x.shape[1]
    dyd = as_layout_of(dy, xd)
    dx = torch.empty_like(xd)
    w = vector(weight, c, 1.0, x.dtype)
    dwp = torch.empty(x.shape[0], c, dtype=torch.float64)
    dbp = torch.empty(x.shape[0], c, dtype=torch.float64)
    kernel = K.gn_bwd_cl if cl else K.gn_bwd
    with threads(xd.numel()):
        kernel(
            nd(_view(dyd, cl, shape)),
            nd(_view(xd, cl, shape)),
            groups,
            nd(w),
            nd(mean),
            nd(rstd),
            nd(_view(dx, cl, shape)),
            nd(dwp),
            nd(dbp),
        )
    return dx, column_sum(dwp).to(x.dtype), column_sum(dbp).to(x.dtype)


def _impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm forward: (y, mean (N, G), rstd (N, G))."""
    return forward(x, groups, weight, bias, eps)


def _fake(x, weight, bias, groups, eps):
    return _like(x), x.new_empty(x.shape[0], groups), x.new_empty(x.shape[0], groups)


def _backward_fake(dy, x, weight, mean, rstd, groups):
    c = x.shape[1]
    return _like(x), x.new_empty(c), x.new_empty(c)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weight, bias, groups, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.layout, ctx.has_bias = groups, bias is not None


#: ``(x, weight, bias, groups, eps) -> (y, mean (N, G), rstd (N, G))``.
GROUP_NORM = define(
    "numba_group_norm",
    _impl,
    _fake,
    _setup,
    stats_norm_grad,
    backward=backward,
    backward_fake=_backward_fake,
)


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    return GROUP_NORM(x, weight, bias, int(num_groups), float(eps))[0]


def instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    # Instance norm is group norm with one channel per group.
    return GROUP_NORM(x, weight, bias, int(x.shape[1]), float(eps))[0]


def group_norm_out(x, num_groups, weight, bias, eps, *, out):
    with torch.no_grad():
        return forward(x, int(num_groups), weight, bias, float(eps), out=out)[0]
