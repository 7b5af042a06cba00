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

**DyT** (``dyt``) and **modulate** (``modulate``, the adaLN "normalize, scale, shift, gate" of
DiT) are one pass forward and one pass backward each (see the kernels' docstrings); DyT's
float32 tanh is a rational approximation within a few ulps of ``torch.tanh``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normkit import _casting
from normkit.backends.numba import layer_norm
from normkit.backends.numba._custom_op import define
from normkit.backends.numba._runtime import chunks, kernels, threads
from normkit.backends.numba._tensors import column_sum, nd, numel, rows

__all__ = ["dyt", "modulate", "rms_norm_cast", "supports_cast", "torch_sum_lanes"]

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
            kernels("transformer").sumsq_rows(nd(x), lanes, nd(out))
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
    K = kernels("transformer")
    x2 = rows(x, n)
    m = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype)
    rstd = torch.empty(m, dtype=x.dtype)
    w = scale if scale is not None else torch.ones(n, dtype=x.dtype)
    k = torch.tensor([1.0, eps, float(n)], dtype=x.dtype)
    with threads(x2.numel()):
        p = chunks(m)
        K.rms_cast_fwd(nd(x2), nd(w), nd(k), lanes, p, nd(y.view(-1, n)), nd(rstd))
    return y, rstd


def _cast_fake(x, scale, n, eps, lanes):
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


#: ``(x, scale, n, eps, lanes) -> (y, rstd)``; the backward is the RMS-norm one of
#: :data:`normkit.backends.numba.layer_norm.LAYER_NORM`.
RMS_NORM_CAST = define(
    "numba_rms_norm_cast",
    _cast_impl,
    _cast_fake,
    _cast_setup,
    _cast_grad,
    backward=layer_norm.backward,
    backward_of=layer_norm.LAYER_NORM,
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
    n = numel(normalized_shape)
    lanes = torch_sum_lanes(x.dtype)
    exact_here = (
        lanes is not None
        and x.is_contiguous()
        and (weight is None or (weight.dtype == x.dtype and weight.is_contiguous()))
        and not _torch_splits_row(x, n)
    )
    if not exact_here or lanes is None:
        return _casting.rms_norm_cast(x, normalized_shape, weight, eps, casting, offset)
    scale = None
    if weight is not None:
        scale = (weight + offset if offset else weight).reshape(-1)
    return RMS_NORM_CAST(x, scale, n, float(eps), int(lanes))[0]


def torch_order_sumsq(x: Tensor, lanes: int) -> Tensor:
    """Row sums of squares of a 2-d float32/float64 tensor in torch's order (for tests)."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    kernels("transformer").sumsq_rows(nd(x.contiguous()), lanes, nd(out))
    return out


# --------------------------------------------------------------------------- DyT


def _dyt_impl(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """DyT forward over rows of the last dim: ``weight·tanh(alpha·x) + bias``."""
    K = kernels("transformer")
    n = x.shape[-1]
    x2 = rows(x, n)
    y = torch.empty(x.shape, dtype=x.dtype)
    w = weight.to(x.dtype).contiguous() if weight is not None else torch.ones(n, dtype=x.dtype)
    b = bias.to(x.dtype).contiguous() if bias is not None else torch.zeros(n, dtype=x.dtype)
    a = alpha.detach().reshape(1).to(x.dtype)
    with threads(x2.numel()):
        K.dyt_fwd(nd(x2), nd(a), nd(w), nd(b), x.dtype == torch.float32, nd(y.view(-1, n)))
    return y


def _dyt_backward(
    dy: Tensor, x: Tensor, alpha: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    K = kernels("transformer")
    n = x.shape[-1]
    x2, dy2 = rows(x, n), rows(dy, n)
    with threads(x2.numel()):
        p = chunks(x2.shape[0])
    dx = torch.empty(x.shape, dtype=x.dtype)
    dwp = torch.empty(p, n, dtype=x.dtype)
    dbp = torch.empty(p, n, dtype=x.dtype)
    dap = torch.empty(p, dtype=x.dtype)
    w = weight.to(x.dtype).contiguous() if weight is not None else torch.ones(n, dtype=x.dtype)
    a = alpha.detach().reshape(1).to(x.dtype)
    with threads(x2.numel()):
        K.dyt_bwd(
            nd(dy2),
            nd(x2),
            nd(a),
            nd(w),
            x.dtype == torch.float32,
            nd(dx.view(-1, n)),
            nd(dwp),
            nd(dbp),
            nd(dap),
        )
    da = column_sum(dap.reshape(p, 1)).reshape(1)
    return dx, da, column_sum(dwp), column_sum(dbp)


def _dyt_fake(x, alpha, weight, bias):
    return x.new_empty(x.shape)


def _dyt_backward_fake(dy, x, alpha, weight):
    n = x.shape[-1]
    return x.new_empty(x.shape), x.new_empty(1), x.new_empty(n), x.new_empty(n)


def _dyt_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, alpha, weight, bias = inputs
    ctx.save_for_backward(x, alpha, weight)
    ctx.has_bias = bias is not None


def _dyt_grad(ctx: Any, dy: Tensor | None, *, backward: Any) -> tuple:
    x, alpha, weight = ctx.saved_tensors
    if dy is None:
        return None, None, None, None
    dx, da, dw, db = backward(dy.contiguous(), x, alpha, weight)
    return (
        dx,
        da.reshape(alpha.shape).to(alpha.dtype),
        dw.to(weight.dtype) if weight is not None else None,
        db.to(weight.dtype if weight is not None else db.dtype) if ctx.has_bias else None,
    )


#: ``(x, alpha, weight, bias) -> y``.
DYT = define(
    "numba_dyt",
    _dyt_impl,
    _dyt_fake,
    _dyt_setup,
    _dyt_grad,
    backward=_dyt_backward,
    backward_fake=_dyt_backward_fake,
)


def dyt(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    return DYT(x, alpha, weight, bias)


# --------------------------------------------------------------------------- modulate

_NORMS = {None: 0, "layer": 1, "rms": 2}


def _per_sample(t: Tensor | None, s: int, n: int, fill: float, dtype: torch.dtype) -> Tensor:
    if t is None:
        return torch.full((s, n), fill, dtype=dtype)
    return t.to(dtype).reshape(s, n).contiguous()


def _mod_impl(
    x: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    gate: Tensor | None,
    norm: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) of the fused modulate over x viewed as (S, L, C)."""
    K = kernels("transformer")
    s, n = x.shape[0], x.shape[-1]
    x3 = x.contiguous().reshape(s, -1, n)
    y = torch.empty(x.shape, dtype=x.dtype)
    n_rows = x3.shape[0] * x3.shape[1]
    mean = torch.empty(n_rows, dtype=x.dtype)
    rstd = torch.empty(n_rows, dtype=x.dtype)
    p = _per_sample(scale, s, n, 0.0, x.dtype) + 1
    sh = _per_sample(shift, s, n, 0.0, x.dtype)
    g = _per_sample(gate, s, n, 1.0, x.dtype)
    with threads(x3.numel()):
        K.mod_fwd(
            nd(x3),
            norm,
            nd(p),
            nd(sh),
            nd(g),
            eps,
            nd(y.view(x3.shape)),
            nd(mean),
            nd(rstd),
        )
    return y, mean, rstd


def _mod_chunks(s: int, length: int, p: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Row ranges per chunk and the partial slot each writes: whole samples per chunk (one
    shared slot) when there are at least ``p`` samples, else row ranges with a slot each."""
    if s >= p:
        edges = [(c * s // p) * length for c in range(p + 1)]
        slot = [0] * p
        slots = 1
    else:
        edges = [c * s * length // p for c in range(p + 1)]
        slot = list(range(p))
        slots = p
    lo = torch.tensor(edges[:-1], dtype=torch.int64)
    hi = torch.tensor(edges[1:], dtype=torch.int64)
    return lo, hi, torch.tensor(slot, dtype=torch.int64), slots


def _mod_backward(
    dy: Tensor,
    x: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    gate: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    norm: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, d scale, d shift, d gate), the last three (S, C)."""
    K = kernels("transformer")
    s, n = x.shape[0], x.shape[-1]
    x3 = x.contiguous().reshape(s, -1, n)
    dy3 = dy.contiguous().reshape(x3.shape)
    with threads(x3.numel()):
        lo, hi, slot, slots = _mod_chunks(s, x3.shape[1], chunks(x3.shape[0] * x3.shape[1]))
    p = _per_sample(scale, s, n, 0.0, x.dtype) + 1
    sh = _per_sample(shift, s, n, 0.0, x.dtype)
    g = _per_sample(gate, s, n, 1.0, x.dtype)
    dx = torch.empty(x.shape, dtype=x.dtype)
    parts = torch.zeros(3, slots, s, n, dtype=x.dtype)
    with threads(x3.numel()):
        K.mod_bwd(
            nd(dy3),
            nd(x3),
            norm,
            nd(p),
            nd(sh),
            nd(g),
            nd(mean),
            nd(rstd),
            nd(lo),
            nd(hi),
            nd(slot),
            nd(dx.view(x3.shape)),
            nd(parts[0]),
            nd(parts[1]),
            nd(parts[2]),
        )
    dp, dsh, dg = (column_sum(t.reshape(slots, -1)).reshape(s, n) for t in parts)
    return dx, dp, dsh, dg


def _mod_fake(x, shift, scale, gate, norm, eps):
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty(rows), x.new_empty(rows)


def _mod_backward_fake(dy, x, shift, scale, gate, mean, rstd, norm):
    sn = (x.shape[0], x.shape[-1])
    return x.new_empty(x.shape), x.new_empty(sn), x.new_empty(sn), x.new_empty(sn)


def _mod_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, shift, scale, gate, norm, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, shift, scale, gate, mean, rstd)
    ctx.norm = norm


def _mod_grad(ctx: Any, dy: Tensor | None, _dm: Any, _dr: Any, *, backward: Any) -> tuple:
    x, shift, scale, gate, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None, None
    dx, dp, dsh, dg = backward(dy.contiguous(), x, shift, scale, gate, mean, rstd, ctx.norm)

    def like(d: Tensor, t: Tensor | None) -> Tensor | None:
        return None if t is None else d.reshape(t.shape).to(t.dtype)

    return dx, like(dsh, shift), like(dp, scale), like(dg, gate), None, None


#: ``(x, shift, scale, gate, norm, eps) -> (y, mean, rstd)``.
MODULATE = define(
    "numba_modulate",
    _mod_impl,
    _mod_fake,
    _mod_setup,
    _mod_grad,
    backward=_mod_backward,
    backward_fake=_mod_backward_fake,
)


def modulate(
    x: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    gate: Tensor | None,
    norm: str | None,
    eps: float,
) -> Tensor:
    return MODULATE(x, shift, scale, gate, _NORMS[norm], float(eps))[0]
