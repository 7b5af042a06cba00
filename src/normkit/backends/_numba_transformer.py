"""The numba backend's transformer ops: preset RMSNorm (bit-exact), DyT, modulate.

**Preset RMSNorm** (``rms_norm_cast``). In float32/float64 every preset of
:mod:`normkit._casting` is ``y = (x·r)·(o + w)`` with ``r = 1/√(Σx²/n + ε)`` (the casts are
no-ops), so one kernel serves them all, provided the sum of squares is summed in torch's order:
:func:`torch_sum_lanes` measures once per dtype the vector width torch's CPU sum uses on this
machine (trying the widths its kernels are built for against ``x.pow(2).sum(-1)``). What the
kernel cannot match is handed to the exact formula itself, never approximated: float16/bfloat16
inputs (the presets round to them between ops) are declined by ``supports``; a weight of another
dtype, a non-contiguous input, and a single row long enough for torch to split its sum across
threads are computed by :func:`normkit._casting.rms_norm_cast` inside the op. The backward uses
the RMS-norm backward kernel (the gradient formula, within float rounding of the oracle's).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normkit import _casting
from normkit.backends import _numba_transformer_kernels as T
from normkit.backends.numba_backend import (
    _call,
    _chunks,
    _ln_backward,
    _np,
    _numel,
    _op_layer_norm_backward,
    _register,
    _rows,
    _threads,
)

__all__ = ["rms_norm_cast", "supports_cast", "torch_sum_lanes"]

_DTYPES = (torch.float32, torch.float64)
#: Vector widths (elements) torch's CPU kernels are built with: 128/256/512-bit registers.
_CANDIDATE_LANES = {torch.float32: (8, 16, 4), torch.float64: (4, 8, 2)}
#: torch splits a reduction's rows across threads only past this many elements (GRAIN_SIZE).
_GRAIN = 32768


@functools.cache
def torch_sum_lanes(dtype: torch.dtype) -> int | None:
    """The vector width (elements) of torch's CPU sum of ``dtype`` rows, or None if no width
    normkit knows reproduces it (then the presets are declined on numba)."""
    g = torch.Generator().manual_seed(0)
    probes = [torch.randn(3, n, generator=g, dtype=dtype) * 3 for n in (5, 37, 300, 1031, 5000)]
    for lanes in _CANDIDATE_LANES.get(dtype, ()):
        ok = True
        for x in probes:
            out = torch.empty(x.shape[0], dtype=dtype)
            T.sumsq_rows(_np(x), lanes, _np(out))
            ok = ok and torch.equal(out, x.pow(2).sum(-1))
        if ok:
            return lanes
    return None


def supports_cast(x: Tensor) -> str | None:
    """Why numba cannot run a preset on ``x`` bit for bit (``None`` when it can)."""
    if x.dtype not in _DTYPES:
        return (
            f"the casting presets round to {x.dtype} between operations and numba's preset kernel "
            "computes in float32/float64 only; backend='torch' runs them exactly"
        )
    if torch_sum_lanes(x.dtype) is None:
        return "torch's summation order on this CPU is not one numba's preset kernel reproduces"
    return None


def _cast_impl(
    x: Tensor, scale: Tensor | None, n: int, eps: float, lanes: int
) -> tuple[Tensor, Tensor]:
    """(y, rstd) of the preset RMSNorm over rows of ``n`` (``scale`` = offset + weight)."""
    x2 = _rows(x, n)
    m = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype)
    rstd = torch.empty(m, dtype=x.dtype)
    w = scale if scale is not None else torch.ones(n, dtype=x.dtype)
    k = torch.tensor([1.0, eps, float(n)], dtype=x.dtype)
    with _threads(x2.numel()):
        chunks = _chunks(m)
        T.rms_cast_fwd(_np(x2), _np(w), _np(k), lanes, chunks, _np(y.view(-1, n)), _np(rstd))
    return y, rstd


_op_cast = torch.library.custom_op("normkit::numba_rms_norm_cast", _cast_impl, mutates_args=())


@_op_cast.register_fake
def _(x, scale, n, eps, lanes):
    return x.new_empty(x.shape), x.new_empty(x.numel() // n)


def _cast_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, scale, n, _eps, _lanes = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, scale, output[1])
    ctx.n = n


def _cast_grad(ctx: Any, dy: Tensor | None, _dr: Any, *, backward: Any) -> tuple:
    x, scale, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None
    mean = torch.zeros_like(rstd)
    dx, dw, _ = backward(dy.contiguous(), None, x, scale, mean, rstd, ctx.n, False)
    gw = dw.reshape(scale.shape).to(scale.dtype) if scale is not None else None
    return dx, gw, None, None, None


_CastFn = _register(
    _op_cast, _cast_impl, _cast_setup, _cast_grad, _op_layer_norm_backward, _ln_backward
)


def _torch_splits_row(x: Tensor, n: int) -> bool:
    """Whether torch sums this single row in parallel pieces (its two-pass reduction)."""
    return x.numel() == n and n >= _GRAIN and torch.get_num_threads() > 1


def rms_norm_cast(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    eps: float,
    casting: str,
    offset: float,
) -> Tensor:
    n = _numel(normalized_shape)
    lanes = torch_sum_lanes(x.dtype)
    exact_here = (
        lanes is not None
        and x.is_contiguous()
        and (weight is None or (weight.dtype == x.dtype and weight.is_contiguous()))
        and not _torch_splits_row(x, n)
    )
    if not exact_here:
        return _casting.rms_norm_cast(x, normalized_shape, weight, eps, casting, offset)
    scale = None
    if weight is not None:
        scale = (weight + offset if offset else weight).reshape(-1)
    return _call(_op_cast, _CastFn, x, scale, n, float(eps), int(lanes))[0]


def torch_order_sumsq(x: Tensor, lanes: int) -> Tensor:
    """Row sums of squares of a 2-d float32/float64 tensor in torch's order (for tests)."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    T.sumsq_rows(_np(x.contiguous()), lanes, _np(out))
    return out
