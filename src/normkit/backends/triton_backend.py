"""The ``triton`` backend: fused GPU kernels for the row-wise norms (LayerNorm, RMSNorm).

One program normalizes one row (all of ``normalized_shape``) in registers: a single read of ``x``
and a single write of ``y`` forward; backward reads ``x``, ``dy`` once and writes ``dx``, while the
``weight``/``bias`` gradients are reduced per program block into a small float32 buffer and summed
by torch (deterministic, no atomics). Statistics accumulate in float32 whatever the input dtype.

Available when Triton imports and a CUDA device is present; supports CUDA tensors of float32,
float16 and bfloat16. With ``TRITON_INTERPRET=1`` set before Triton is imported (Triton's own
switch: its interpreter runs the same kernels with numpy), the backend is also available without
a GPU and runs on CPU tensors, slowly, for testing the kernels; ``"auto"`` never picks it for CPU
tensors. Rows (product of ``normalized_shape``) longer than one block (65536
elements) run the native torch kernel. Other inputs go to the next backend by the auto rule. Kernel layout follows the
Triton layer-norm tutorial (Tillet et al.), with per-block partial sums in place of its lock-based
reduction.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from normkit.backends.registry import Backend, get, register

_MAX_ROW = 65536
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


_AVAILABLE: dict[str, bool] = {}


def _interpreted() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``): kernels on CPU tensors."""
    if "interpret" not in _AVAILABLE:
        _AVAILABLE["interpret"] = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return _AVAILABLE["interpret"]


def _available() -> bool:
    # A dict memo, not functools.cache: torch.compile warns on every lru_cache-wrapped call.
    if "triton" not in _AVAILABLE:
        _AVAILABLE["triton"] = importlib.util.find_spec("triton") is not None and (
            torch.cuda.is_available() or _interpreted()
        )
    return _AVAILABLE["triton"]


def _supports(op: str, x: Tensor) -> str | None:
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _interpreted()):
        return (
            "the triton backend runs on CUDA tensors only (CPU tensors under Triton's "
            "interpreter, TRITON_INTERPRET=1)"
        )
    if x.dtype not in _DTYPES:
        return f"the triton backend supports {[str(d) for d in _DTYPES]} (got {x.dtype})"
    return None


@cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(X, Y, W, B, Mean, Rstd, stride, N, eps,
            RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < N
        x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
        if RMS:
            mean = 0.0
            xc = x
        else:
            mean = tl.sum(x, axis=0) / N
            xc = tl.where(m, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        tl.store(Mean + row, mean)
        tl.store(Rstd + row, rstd)
        y = xc * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def bwd(X, DY, DX, W, Mean, Rstd, DW, DB, stride, M, N, rows_per_prog,
            RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < N
        if HAS_W:
            w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK,), dtype=tl.float32)
        db = tl.zeros((BLOCK,), dtype=tl.float32)
        start = pid * rows_per_prog
        for row in range(start, tl.minimum(start + rows_per_prog, M)):
            x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride + cols, mask=m, other=0.0).to(tl.float32)
            mean = tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
            wdy = dy * w if HAS_W else dy
            c1 = tl.sum(xhat * wdy, axis=0) / N
            if RMS:
                dx = (wdy - xhat * c1) * rstd
            else:
                c2 = tl.sum(wdy, axis=0) / N
                dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=m)
            if HAS_W:
                dw += dy * xhat
            if HAS_B:
                db += dy
        if HAS_W:
            tl.store(DW + pid * N + cols, dw, mask=m)
        if HAS_B:
            tl.store(DB + pid * N + cols, db, mask=m)

    @triton.jit
    def colsum(DW, DB, GW, GB, P, N, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
        # sum the per-program partial rows of dW/dB and cast, in one launch for both
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = cols < N
        aw = tl.zeros((BLOCK,), dtype=tl.float32)
        ab = tl.zeros((BLOCK,), dtype=tl.float32)
        for p in range(0, P):
            if HAS_W:
                aw += tl.load(DW + p * N + cols, mask=m, other=0.0)
            if HAS_B:
                ab += tl.load(DB + p * N + cols, mask=m, other=0.0)
        if HAS_W:
            tl.store(GW + cols, aw.to(GW.dtype.element_ty), mask=m)
        if HAS_B:
            tl.store(GB + cols, ab.to(GB.dtype.element_ty), mask=m)

    return triton, fwd, bwd, colsum


@cache
def _sm_count(index: int) -> int:  # pragma: no cover - needs a GPU
    return torch.cuda.get_device_properties(index).multi_processor_count


def _launch_cfg(n: int) -> tuple[int, int]:
    import triton

    block = triton.next_power_of_2(n)
    warps = min(max(block // 256, 1), 16)
    return block, warps


class _RowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, n: int, eps: float, rms: bool):  # type: ignore[override]
        _, fwd, _, _ = _kernels()
        x2 = x.reshape(-1, n).contiguous()
        m = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(m, device=x.device, dtype=torch.float32)
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        block, warps = _launch_cfg(n)
        fwd[(m,)](
            x2, y, weight if weight is not None else x2, bias if bias is not None else x2,
            mean, rstd, x2.stride(0), n, eps,
            RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=block,
            num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.has_bias, ctx.n, ctx.rms, ctx.shape = bias is not None, n, rms, x.shape
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        _, _, bwd, colsum = _kernels()
        x2, weight, mean, rstd = ctx.saved_tensors
        n, m = ctx.n, x2.shape[0]
        dy2 = dy.reshape(-1, n).contiguous()
        dx = torch.empty_like(x2)
        # interpreted (CPU): a few programs, so the partial-sum reduction of dW/dB is exercised
        sms = _sm_count(x2.device.index or 0) if x2.is_cuda else 1
        progs = min(m, 4 * sms)
        rows_per_prog = -(-m // progs)
        progs = -(-m // rows_per_prog)
        has_w = weight is not None
        dw = torch.empty((progs, n), device=x2.device, dtype=torch.float32) if has_w else None
        db = (
            torch.empty((progs, n), device=x2.device, dtype=torch.float32) if ctx.has_bias else None
        )
        block, warps = _launch_cfg(n)
        bwd[(progs,)](
            x2, dy2, dx, weight if has_w else x2, mean, rstd,
            dw if has_w else mean, db if db is not None else mean,
            x2.stride(0), m, n, rows_per_prog,
            RMS=ctx.rms, HAS_W=has_w, HAS_B=ctx.has_bias, BLOCK=block, num_warps=warps,
        )  # fmt: skip
        gw = torch.empty(n, device=x2.device, dtype=weight.dtype) if has_w else None
        gb = torch.empty(n, device=x2.device, dtype=ctx.bias_dtype) if db is not None else None
        if has_w or db is not None:
            cblock = 256
            colsum[(-(-n // cblock),)](
                dw if has_w else mean,
                db if db is not None else mean,
                gw if has_w else mean,
                gb if gb is not None else mean,
                progs,
                n,
                HAS_W=has_w,
                HAS_B=db is not None,
                BLOCK=cblock,
            )
        return dx.reshape(ctx.shape), gw, gb, None, None, None


def _row_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    rms: bool,
) -> Tensor:
    n = 1
    for s in normalized_shape:
        n *= s
    if n > _MAX_ROW:  # a row that does not fit one block: the native kernel is the right tool
        op = "rms_norm" if rms else "layer_norm"
        args = (weight, eps) if rms else (weight, bias, eps)
        return get("torch").ops[op](x, normalized_shape, *args)
    w = weight.reshape(n).contiguous() if weight is not None else None
    b = bias.reshape(n).contiguous() if bias is not None else None
    return _RowNorm.apply(x, w, b, n, float(eps), rms)


def _layer_norm(x, normalized_shape, weight, bias, eps):
    return _row_norm(x, normalized_shape, weight, bias, eps, rms=False)


def _rms_norm(x, normalized_shape, weight, eps):
    return _row_norm(x, normalized_shape, weight, None, eps, rms=True)


# Measured on an H200 (torch 2.11, Triton 3.6; scripts/bench_triton.py): the kernels reach
# 84-98% of copy bandwidth, but each call pays ~0.1 ms (fwd) / ~0.5 ms (fwd+bwd) of host-side
# launch overhead there, so they beat torch eager in both directions only from ~2^26 elements.
_AUTO_MIN_NUMEL = 1 << 26


def _prefers(op: str, x: Tensor) -> bool:
    # the interpreter is a correctness tool: never the automatic choice for CPU tensors
    return x.device.type == "cuda" and x.numel() >= _AUTO_MIN_NUMEL


BACKEND = Backend(
    name="triton",
    priority=30,
    description="fused Triton GPU kernels for LayerNorm/RMSNorm (CUDA, fp32/fp16/bf16)",
    ops={"layer_norm": _layer_norm, "rms_norm": _rms_norm},
    supports=_supports,
    prefers=_prefers,
    is_available=_available,
)
register(BACKEND)
