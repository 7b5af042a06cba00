"""The ``numba`` backend: fused, parallel CPU kernels (optional extra ``normkit[fast]``).

Each op is a ``torch.library.custom_op`` (namespace ``normkit``) with a fake implementation and
a registered autograd formula, so models using it run under ``torch.compile`` (the op is opaque
to Inductor, no graph break) and ``torch.export``. The kernels live in
:mod:`normkit.backends._numba_kernels`; this module converts tensors to NumPy views (no copies
for contiguous/channels-last inputs), allocates outputs and registers the backend.

Supported: CPU, float32/float64, ``layer_norm``, ``rms_norm``, ``add_layer_norm``,
``add_rms_norm`` (rows of the trailing dims), ``batch_norm_train``/``batch_norm_eval`` (any
feature axis; contiguous or channels_last), ``group_norm`` (contiguous or channels_last).
Everything else (float16/bfloat16, other devices, instance norm) is declined by
:func:`supports`, so ``backend="auto"`` falls back to ``torch``.

**The auto rule** (:func:`prefers`): numba is taken only for tensors of at least
:data:`MIN_NUMEL` elements in a layout its kernels stream (contiguous, or channels_last for
batch/group norm). Below that, a parallel kernel's fixed costs (custom-op dispatch, waking
OpenMP workers that went to sleep: several ms after an idle pause) outweigh the bandwidth win,
and torch is at least as fast. The numbers behind the threshold are in the README ("Speed").

**JIT cache.** Kernels compile on first use per dtype (seconds) and are cached on disk:
``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/normkit/numba`` (``~/.cache/...``). Later
processes load them in well under a second. :func:`warm_up` compiles/loads everything at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from normkit._stats import Moments, merge_moments
from normkit.backends.registry import Backend, register

__all__ = ["BACKEND", "MIN_NUMEL", "cache_dir", "prefers", "supports", "warm_up"]

#: Smallest input (elements) for which ``"auto"`` prefers numba; see the module docstring.
MIN_NUMEL = 1 << 20

_DTYPES = (torch.float32, torch.float64)
_ROW_OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
_CHANNEL_OPS = ("batch_norm_train", "batch_norm_eval", "group_norm")


def cache_dir() -> Path:
    """Where compiled kernels are cached: ``NUMBA_CACHE_DIR`` or the user cache dir."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normkit" / "numba"


def _configure_cache() -> None:
    path = cache_dir()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(path))
    import numba as nb

    if not nb.config.CACHE_DIR:
        nb.config.CACHE_DIR = str(path)


_configure_cache()

import numba  # noqa: E402  (after the cache dir is set)

from normkit.backends import _numba_kernels as K  # noqa: E402

# --------------------------------------------------------------------------- helpers


def _np(t: Tensor) -> Any:
    """A NumPy view of a CPU tensor (no copy; the tensor must be dense in its layout)."""
    return t.detach().numpy()


def _chunks(rows: int) -> int:
    return max(1, min(rows, 4 * numba.get_num_threads()))


#: Inputs smaller than this run the kernels on one thread: no wake-up of the worker pool, no
#: barrier (which on a busy machine waits for a descheduled worker).
SERIAL_NUMEL = 1 << 15


@contextlib.contextmanager
def _threads(numel: int) -> Iterator[None]:
    """Run a kernel on torch's thread budget: one thread for small inputs, else
    ``torch.get_num_threads()`` (capped by numba's pool).

    numba's OpenMP layer shares its runtime with torch, so a launch with numba's own count would
    silently change ``torch.get_num_threads()`` for the rest of the process (a user's
    ``torch.set_num_threads(1)`` in data-loader workers or parallel jobs would be undone); torch's
    count is restored if the launch moved it.
    """
    torch_n = torch.get_num_threads()
    n = 1 if numel < SERIAL_NUMEL else max(1, min(torch_n, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_n:
            torch.set_num_threads(torch_n)


def _is_channels_last(x: Tensor) -> bool:
    if x.is_contiguous():
        return False
    if x.ndim == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _as_layout_of(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` densely laid out like ``ref`` (contiguous or channels_last), copying only if needed."""
    if _is_channels_last(ref):
        fmt = torch.channels_last if ref.ndim == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    return t.contiguous()


def _vec(t: Tensor | None, n: int, fill: float, dtype: torch.dtype) -> Tensor:
    """``t`` flattened to a contiguous (n,) vector in ``dtype``, or a constant vector."""
    if t is None:
        return torch.full((n,), fill, dtype=dtype)
    return t.reshape(-1).to(dtype).contiguous()


def _colsum(parts: Tensor) -> Tensor:
    """Column sums of small (P, N) partials with NumPy in float64, returned in their dtype."""
    a = _np(parts)
    return torch.from_numpy(a.sum(0, dtype=np.float64).astype(a.dtype))


def _rows(x: Tensor, n: int) -> Tensor:
    return x.contiguous().reshape(-1, n)


def _traced(x: Tensor) -> bool:
    """Whether torch.compile/torch.export (or a dispatch mode) is tracing this call.

    Traced calls go through the ``torch.library`` custom ops (opaque to the compiler, with fake
    implementations); eager calls use an equivalent ``torch.autograd.Function`` that calls the
    kernels directly, skipping the dispatcher round trip and the one-time ``torch._dynamo``
    import (~1–4 s) that a custom op's first eager call triggers.
    """
    if torch.compiler.is_compiling() or type(x) not in (Tensor, torch.nn.Parameter):
        return True
    return _get_current_dispatch_mode() is not None


def _eager_function(name: str, forward: Any, setup: Any, grad: Any, backward: Any) -> Any:
    """A ``torch.autograd.Function`` running ``forward``/``grad`` with the direct ``backward``."""

    def fwd(ctx: Any, *inputs: Any) -> Any:
        ctx.set_materialize_grads(False)
        out = forward(*inputs)
        setup(ctx, inputs, out)
        return out

    def bwd(ctx: Any, *grads: Any) -> Any:
        return grad(ctx, *grads, backward=backward)

    body = {"forward": staticmethod(fwd), "backward": staticmethod(bwd), "__doc__": forward.__doc__}
    return type(name, (torch.autograd.Function,), body)


def _register(op: Any, forward: Any, setup: Any, grad: Any, op_backward: Any, direct: Any) -> Any:
    """Attach autograd to the custom op and return the eager twin (an autograd.Function)."""
    torch.library.register_autograd(
        op._qualname, functools.partial(grad, backward=op_backward), setup_context=setup
    )
    return _eager_function(op._qualname.split("::")[1], forward, setup, grad, direct)


def _call(op: Any, fn: Any, x: Tensor, *args: Any) -> Any:
    return op(x, *args) if _traced(x) else fn.apply(x, *args)


# --------------------------------------------------------------------------- layer / RMS norm ops


def _ln_forward(
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
    x2 = _rows(x, n)
    add = residual is not None
    r2 = _rows(residual, n) if residual is not None else x2
    if out is not None:
        y = out[0]
        s = out[1] if add else x
    else:
        y = torch.empty(x.shape, dtype=x.dtype)
        s = torch.empty(x.shape, dtype=x.dtype) if add else x
    m = x2.shape[0]
    mean = torch.empty(m, dtype=x.dtype)
    rstd = torch.empty(m, dtype=x.dtype)
    w = _vec(weight, n, 1.0, x.dtype)
    y2, s2 = y.view(-1, n), (s.view(-1, n) if add else x2)
    b = _vec(bias, n, 0.0, x.dtype)
    with _threads(x2.numel()):
        if centered:
            K.ln_fwd(
                _np(x2), _np(r2), add, _np(w), _np(b), eps, _np(y2), _np(s2), _np(mean), _np(rstd)
            )
        else:
            K.rms_fwd(_np(x2), _np(r2), add, _np(w), eps, _np(y2), _np(s2), _np(rstd))
    if not centered:
        mean.zero_()
    return y, s, mean, rstd


def _ln_backward(
    dy: Tensor,
    ds: Tensor | None,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    n: int,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    x2 = _rows(x, n)
    dy2 = _rows(dy, n)
    m = x2.shape[0]
    with _threads(x2.numel()):
        p = _chunks(m)
    dx = torch.empty(x.shape, dtype=x.dtype)
    # Partials are zeroed inside the kernel and summed by NumPy (one thread): a torch op here
    # would wake torch's OpenMP pool while numba's still spins, costing milliseconds.
    dwp = torch.empty(p, n, dtype=x.dtype)
    dbp = torch.empty(p, n, dtype=x.dtype)
    w = _vec(weight, n, 1.0, x.dtype)
    ds2 = _rows(ds, n) if ds is not None else dy2
    with _threads(x2.numel()):
        K.ln_bwd(
            _np(dy2),
            _np(x2),
            _np(w),
            _np(mean),
            _np(rstd),
            centered,
            ds is not None,
            _np(ds2),
            _np(dx.view(-1, n)),
            _np(dwp),
            _np(dbp),
        )
    return dx, _colsum(dwp), _colsum(dbp)


def _ln_impl(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    n: int,
    eps: float,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused (add +) LayerNorm/RMSNorm forward: returns (y, x + residual or empty, mean, rstd)."""
    y, s, mean, rstd = _ln_forward(x, residual, weight, bias, n, eps, centered)
    if residual is None:
        s = x.new_empty(0)
    return y, s, mean, rstd


_op_layer_norm = torch.library.custom_op("normkit::numba_layer_norm", _ln_impl, mutates_args=())


@_op_layer_norm.register_fake
def _(x, residual, weight, bias, n, eps, centered):
    m = x.numel() // n
    s = x.new_empty(x.shape) if residual is not None else x.new_empty(0)
    return x.new_empty(x.shape), s, x.new_empty(m), x.new_empty(m)


@torch.library.custom_op("normkit::numba_layer_norm_backward", mutates_args=())
def _op_layer_norm_backward(
    dy: Tensor,
    ds: Tensor | None,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    n: int,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`_op_layer_norm` (``x`` is the normalised input, i.e. the sum)."""
    return _ln_backward(dy, ds, x, weight, mean, rstd, n, centered)


@_op_layer_norm_backward.register_fake
def _(dy, ds, x, weight, mean, rstd, n, centered):
    return x.new_empty(x.shape), x.new_empty(n), x.new_empty(n)


def _ln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, residual, weight, bias, n, _eps, centered = inputs
    _y, s, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.n, ctx.centered, ctx.add = n, centered, residual is not None
    ctx.has_bias = bias is not None


def _ln_grad(
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


_LayerNormFn = _register(
    _op_layer_norm, _ln_impl, _ln_setup, _ln_grad, _op_layer_norm_backward, _ln_backward
)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:  # a plain loop: torch.compile traces it without a graph break
        n *= int(s)
    return n


def _bias_like(bias: Tensor | None) -> Tensor | None:
    return bias.reshape(-1) if bias is not None else None


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    n = _numel(normalized_shape)
    w = weight.reshape(-1) if weight is not None else None
    return _call(_op_layer_norm, _LayerNormFn, x, None, w, _bias_like(bias), n, float(eps), True)[0]


def rms_norm(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> Tensor:
    n = _numel(normalized_shape)
    w = weight.reshape(-1) if weight is not None else None
    return _call(_op_layer_norm, _LayerNormFn, x, None, w, None, n, float(eps), False)[0]


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    n = _numel(normalized_shape)
    w = weight.reshape(-1) if weight is not None else None
    y, s, _, _ = _call(
        _op_layer_norm, _LayerNormFn, x, residual, w, _bias_like(bias), n, float(eps), True
    )
    return y, s


def add_rms_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    n = _numel(normalized_shape)
    w = weight.reshape(-1) if weight is not None else None
    y, s, _, _ = _call(_op_layer_norm, _LayerNormFn, x, residual, w, None, n, float(eps), False)
    return y, s


# --------------------------------------------------------------------------- batch norm ops


def _bn_views(x: Tensor, axis: int) -> tuple[str, Tensor, tuple[int, ...]]:
    """How the kernels see ``x``: ("rows", dense tensor, (M, C)) or ("acb", ..., (A, C, B))."""
    axis %= x.ndim
    c = x.shape[axis]
    if axis == 1 and _is_channels_last(x):
        return "rows", x, (x.numel() // max(c, 1), c)
    xc = x.contiguous()
    a = _numel(x.shape[:axis])
    b = _numel(x.shape[axis + 1 :])
    if b == 1:
        return "rows", xc, (a, c)
    return "acb", xc, (a, c, b)


def _dense_view(t: Tensor, layout: str, shape: tuple[int, ...]) -> Tensor:
    """The kernel's view of a tensor laid out like the input (contiguous or channels_last)."""
    if layout == "rows" and _is_channels_last(t):
        perm = (0, *range(2, t.ndim), 1)
        return t.permute(perm).reshape(shape)
    return t.view(shape)


def _bn_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
    out: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    layout, xd, shape = _bn_views(x, axis)
    c = shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    xv, yv = _dense_view(xd, layout, shape), _dense_view(y, layout, shape)
    w = _vec(weight, c, 1.0, x.dtype)
    b = _vec(bias, c, 0.0, x.dtype)
    mean = torch.empty(c, dtype=x.dtype)
    var = torch.empty(c, dtype=x.dtype)
    rstd = torch.empty(c, dtype=x.dtype)
    with _threads(xv.numel()):
        if layout == "acb":
            K.bn_fwd_acb(_np(xv), _np(w), _np(b), eps, _np(yv), _np(mean), _np(var), _np(rstd))
        else:
            p = _chunks(shape[0])
            cnt = torch.empty(p, dtype=torch.float64)
            mu_p = torch.empty(p, c, dtype=torch.float64)
            m2_p = torch.empty(p, c, dtype=torch.float64)
            K.bn_stats_rows(_np(xv), _np(cnt), _np(mu_p), _np(m2_p))
            parts = [Moments(cnt[i], mu_p[i], m2_p[i]) for i in range(p) if cnt[i] > 0]
            mom = merge_moments(parts)
            v = mom.m2 / mom.count
            r = torch.rsqrt(v + eps)
            mean.copy_(mom.mean)
            var.copy_(v)
            rstd.copy_(r)
            sc = (w.double() * r).to(x.dtype)
            K.affine_rows(_np(xv), _np(mean), _np(sc), _np(b), _np(yv))
    return y, mean, var, rstd


def _bn_backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    layout, xd, shape = _bn_views(x, axis)
    c = shape[1]
    dyd = _as_layout_of(dy, xd)
    dx = torch.empty_like(xd)
    xv, dyv, dxv = (_dense_view(t, layout, shape) for t in (xd, dyd, dx))
    w = _vec(weight, c, 1.0, x.dtype)
    dw = torch.empty(c, dtype=x.dtype)
    db = torch.empty(c, dtype=x.dtype)
    with _threads(xv.numel()):
        if layout == "acb":
            K.bn_bwd_acb(
                _np(dyv), _np(xv), _np(w), _np(mean), _np(rstd), _np(dxv), _np(dw), _np(db)
            )
        else:
            p = _chunks(shape[0])
            s1p = torch.empty(p, c, dtype=torch.float64)
            s2p = torch.empty(p, c, dtype=torch.float64)
            K.bn_bwd_sums_rows(_np(dyv), _np(xv), _np(mean), _np(s1p), _np(s2p))
            s1, s2 = s1p.sum(0), s2p.sum(0)
            r, wd, cnt = rstd.double(), w.double(), shape[0]
            db.copy_(s1)
            dw.copy_(s2 * r)
            k1 = (wd * r).to(x.dtype)
            k2 = (wd * r**3 * s2 / cnt).to(x.dtype)
            k3 = (wd * r * s1 / cnt).to(x.dtype)
            K.bwd_apply_rows(_np(dyv), _np(xv), _np(mean), _np(k1), _np(k2), _np(k3), _np(dxv))
    return dx, dw, db


def _bn_impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training batch norm: (y, mean, biased var, rstd), statistics per feature on ``axis``."""
    return _bn_forward(x, weight, bias, eps, axis)


_op_batch_norm = torch.library.custom_op("normkit::numba_batch_norm", _bn_impl, mutates_args=())


@_op_batch_norm.register_fake
def _(x, weight, bias, eps, axis):
    c = x.shape[axis % x.ndim]
    y = _bn_like(x, axis)
    return y, x.new_empty(c), x.new_empty(c), x.new_empty(c)


def _bn_like(x: Tensor, axis: int) -> Tensor:
    """An output laid out as the kernels write it: channels_last kept for axis 1, else dense."""
    if axis % x.ndim == 1 and _is_channels_last(x):
        return torch.empty_like(x)
    return x.new_empty(x.shape)


@torch.library.custom_op("normkit::numba_batch_norm_backward", mutates_args=())
def _op_batch_norm_backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`_op_batch_norm`: (dx, dweight, dbias)."""
    return _bn_backward(dy, x, weight, mean, rstd, axis)


@_op_batch_norm_backward.register_fake
def _(dy, x, weight, mean, rstd, axis):
    c = x.shape[axis % x.ndim]
    return _bn_like(x, axis), x.new_empty(c), x.new_empty(c)


def _bn_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weight, bias, _eps, axis = inputs
    _y, mean, var, rstd = output
    ctx.mark_non_differentiable(mean, var, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.layout, ctx.has_bias = axis, bias is not None


def _stats_norm_grad(ctx: Any, dy: Tensor | None, *_: Any, backward: Any) -> tuple:
    """Gradients of a norm whose op saved ``(x, weight, mean, rstd)`` and one layout argument
    (``ctx.layout``: the feature axis of batch norm, the group count of group norm)."""
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None
    dx, dw, db = backward(dy, x, weight, mean, rstd, ctx.layout)
    gw = dw.to(weight.dtype) if weight is not None else None
    gb = db.to(weight.dtype if weight is not None else db.dtype) if ctx.has_bias else None
    return dx, gw, gb, None, None


_BatchNormFn = _register(
    _op_batch_norm, _bn_impl, _bn_setup, _stats_norm_grad, _op_batch_norm_backward, _bn_backward
)


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, var, _ = _call(_op_batch_norm, _BatchNormFn, x, weight, bias, float(eps), int(axis))
    return y, mean, var


def _bn_eval_forward(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
    out: Sequence[Tensor] | None = None,
) -> Tensor:
    layout, xd, shape = _bn_views(x, axis)
    c = shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    xv, yv = _dense_view(xd, layout, shape), _dense_view(y, layout, shape)
    w = _vec(weight, c, 1.0, torch.float64)
    mu = running_mean.to(x.dtype).contiguous()
    sc = (w * torch.rsqrt(running_var.double() + eps)).to(x.dtype)
    b = _vec(bias, c, 0.0, x.dtype)
    kernel = K.affine_acb if layout == "acb" else K.affine_rows
    with _threads(xv.numel()):
        kernel(_np(xv), _np(mu), _np(sc), _np(b), _np(yv))
    return y


def _bn_eval_impl(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    """Eval batch norm with the running statistics: y = (x − μ)·γ/√(σ² + ε) + β."""
    return _bn_eval_forward(x, running_mean, running_var, weight, bias, eps, axis)


_op_batch_norm_eval = torch.library.custom_op(
    "normkit::numba_batch_norm_eval", _bn_eval_impl, mutates_args=()
)


@_op_batch_norm_eval.register_fake
def _(x, running_mean, running_var, weight, bias, eps, axis):
    return _bn_like(x, axis)


def _bn_eval_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, rm, rv, weight, bias, eps, axis = inputs
    ctx.save_for_backward(x, rm, rv, weight)
    ctx.eps, ctx.axis, ctx.has_bias = eps, axis, bias is not None


def _bn_eval_grad(ctx: Any, dy: Tensor | None, *, backward: Any = None) -> tuple:
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


_BatchNormEvalFn = _register(
    _op_batch_norm_eval, _bn_eval_impl, _bn_eval_setup, _bn_eval_grad, None, None
)


def batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    return _call(
        _op_batch_norm_eval,
        _BatchNormEvalFn,
        x,
        running_mean,
        running_var,
        weight,
        bias,
        float(eps),
        int(axis),
    )


# --------------------------------------------------------------------------- group norm ops


def _gn_views(x: Tensor) -> tuple[bool, Tensor, tuple[int, int, int]]:
    """(channels_last?, dense tensor, kernel shape (N, C, S) or (N, S, C))."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(n * c, 1)
    if _is_channels_last(x):
        return True, x, (n, s, c)
    return False, x.contiguous(), (n, c, s)


def _gn_view(t: Tensor, cl: bool, shape: tuple[int, int, int]) -> Tensor:
    if cl:
        return t.permute(0, *range(2, t.ndim), 1).reshape(shape)
    return t.view(shape)


def _gn_forward(
    x: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    out: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    cl, xd, shape = _gn_views(x)
    c = x.shape[1]
    y = out[0] if out is not None else torch.empty_like(xd)
    w = _vec(weight, c, 1.0, x.dtype)
    b = _vec(bias, c, 0.0, x.dtype)
    mean = torch.empty(x.shape[0], groups, dtype=x.dtype)
    rstd = torch.empty(x.shape[0], groups, dtype=x.dtype)
    kernel = K.gn_fwd_cl if cl else K.gn_fwd
    with _threads(xd.numel()):
        kernel(
            _np(_gn_view(xd, cl, shape)),
            groups,
            _np(w),
            _np(b),
            eps,
            _np(_gn_view(y, cl, shape)),
            _np(mean),
            _np(rstd),
        )
    return y, mean, rstd


def _gn_backward(
    dy: Tensor, x: Tensor, groups: int, weight: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    cl, xd, shape = _gn_views(x)
    c = x.shape[1]
    dyd = _as_layout_of(dy, xd)
    dx = torch.empty_like(xd)
    w = _vec(weight, c, 1.0, x.dtype)
    dwp = torch.empty(x.shape[0], c, dtype=torch.float64)
    dbp = torch.empty(x.shape[0], c, dtype=torch.float64)
    kernel = K.gn_bwd_cl if cl else K.gn_bwd
    with _threads(xd.numel()):
        kernel(
            _np(_gn_view(dyd, cl, shape)),
            _np(_gn_view(xd, cl, shape)),
            groups,
            _np(w),
            _np(mean),
            _np(rstd),
            _np(_gn_view(dx, cl, shape)),
            _np(dwp),
            _np(dbp),
        )
    return dx, _colsum(dwp).to(x.dtype), _colsum(dbp).to(x.dtype)


def _gn_like(x: Tensor) -> Tensor:
    return torch.empty_like(x) if _is_channels_last(x) else x.new_empty(x.shape)


def _gn_impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Group norm forward: (y, mean (N, G), rstd (N, G))."""
    return _gn_forward(x, groups, weight, bias, eps)


_op_group_norm = torch.library.custom_op("normkit::numba_group_norm", _gn_impl, mutates_args=())


@_op_group_norm.register_fake
def _(x, weight, bias, groups, eps):
    return _gn_like(x), x.new_empty(x.shape[0], groups), x.new_empty(x.shape[0], groups)


@torch.library.custom_op("normkit::numba_group_norm_backward", mutates_args=())
def _op_group_norm_backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`_op_group_norm`: (dx, dweight, dbias)."""
    return _gn_backward(dy, x, groups, weight, mean, rstd)


@_op_group_norm_backward.register_fake
def _(dy, x, weight, mean, rstd, groups):
    c = x.shape[1]
    return _gn_like(x), x.new_empty(c), x.new_empty(c)


def _gn_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weight, bias, groups, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.layout, ctx.has_bias = groups, bias is not None


_GroupNormFn = _register(
    _op_group_norm,
    _gn_impl,
    _gn_setup,
    _stats_norm_grad,
    _op_group_norm_backward,
    lambda dy, x, weight, mean, rstd, groups: _gn_backward(dy, x, groups, weight, mean, rstd),
)


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    return _call(_op_group_norm, _GroupNormFn, x, weight, bias, int(num_groups), float(eps))[0]


def instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    # Instance norm is group norm with one channel per group.
    return _call(_op_group_norm, _GroupNormFn, x, weight, bias, int(x.shape[1]), float(eps))[0]


# --------------------------------------------------------------------------- low precision, out=


def _upcast(fn: Any) -> Any:
    """Run ``fn`` in float32 for float16/bfloat16 inputs and cast results back (autograd-aware).

    Statistics never accumulate in half precision; ``"auto"`` does not pick numba for these
    dtypes (torch does the same upcast), but an explicit ``backend="numba"`` gives right answers.
    """

    def wrapped(x: Tensor, *args: Any) -> Any:
        if x.dtype in _DTYPES:
            return fn(x, *args)
        low = x.dtype
        args = tuple(a.float() if isinstance(a, Tensor) and a.dtype == low else a for a in args)
        out = fn(x.float(), *args)
        if isinstance(out, tuple):
            return tuple(
                o.to(low) if o.is_floating_point() and o.ndim == x.ndim else o for o in out
            )
        return out.to(low)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _out_layer_norm(x, normalized_shape, weight, bias, eps, *, out):  # type: ignore[no-untyped-def]
    n = _numel(normalized_shape)
    with torch.no_grad():
        return _ln_forward(x, None, weight, bias, n, float(eps), True, out=out)[0]


def _out_rms_norm(x, normalized_shape, weight, eps, *, out):  # type: ignore[no-untyped-def]
    n = _numel(normalized_shape)
    with torch.no_grad():
        return _ln_forward(x, None, weight, None, n, float(eps), False, out=out)[0]


def _out_add_layer_norm(x, residual, normalized_shape, weight, bias, eps, *, out):  # type: ignore[no-untyped-def]
    n = _numel(normalized_shape)
    with torch.no_grad():
        return _ln_forward(x, residual, weight, bias, n, float(eps), True, out=out)[:2]


def _out_add_rms_norm(x, residual, normalized_shape, weight, eps, *, out):  # type: ignore[no-untyped-def]
    n = _numel(normalized_shape)
    with torch.no_grad():
        return _ln_forward(x, residual, weight, None, n, float(eps), False, out=out)[:2]


def _out_batch_norm_train(x, weight, bias, eps, axis, *, out):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return _bn_forward(x, weight, bias, float(eps), int(axis), out=out)[:3]


def _out_batch_norm_eval(x, rm, rv, weight, bias, eps, axis, *, out):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return _bn_eval_forward(x, rm, rv, weight, bias, float(eps), int(axis), out=out)


def _out_group_norm(x, num_groups, weight, bias, eps, *, out):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return _gn_forward(x, int(num_groups), weight, bias, float(eps), out=out)[0]


#: Forward entry points writing into caller-provided outputs (``out=[y]`` or ``[y, sum]``),
#: laid out like the input, float32/float64 only, no autograd. Used by ``normkit bench`` to
#: time reused-output forwards; ``normkit.functional.add_layer_norm(..., out=...)`` uses them.
OUT_OPS = {
    "layer_norm": _out_layer_norm,
    "rms_norm": _out_rms_norm,
    "add_layer_norm": _out_add_layer_norm,
    "add_rms_norm": _out_add_rms_norm,
    "batch_norm_train": _out_batch_norm_train,
    "batch_norm_eval": _out_batch_norm_eval,
    "group_norm": _out_group_norm,
}


# --------------------------------------------------------------------------- registration


def supports(op: str, x: Tensor) -> str | None:
    """Why numba cannot run ``op`` on ``x`` (``None`` when it can)."""
    if x.device.type != "cpu":
        return f"numba kernels run on the CPU only (got a tensor on {x.device})"
    if x.dtype not in (*_DTYPES, torch.float16, torch.bfloat16):
        return f"numba kernels take floating-point inputs (got {x.dtype})"
    if x.numel() == 0:
        return "the input is empty"
    if op in _CAST_OPS:
        return _tf.supports_cast(x)
    return None


def prefers(op: str, x: Tensor) -> bool:
    """The numba part of the auto rule: float32/float64, ≥ MIN_NUMEL elements, streamable layout."""
    if x.dtype not in _DTYPES or x.numel() < MIN_NUMEL:
        return False
    if op in _CHANNEL_OPS:
        return x.is_contiguous() or _is_channels_last(x)
    return x.is_contiguous()


def warm_up(dtypes: Sequence[torch.dtype] = _DTYPES) -> None:
    """Compile (first time) or load from the disk cache every kernel, for each dtype."""
    for dt in dtypes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 4, 4, 4, generator=g, dtype=dt)
        r = torch.randn(4, 4, 4, 4, generator=g, dtype=dt)
        w = torch.ones(4, dtype=dt, requires_grad=True)
        xs = [x.requires_grad_(), x.detach().contiguous(memory_format=torch.channels_last)]
        for xi in xs:
            xi = xi.detach().requires_grad_()
            outs = [
                layer_norm(xi, (4,), w, w, 1e-5),
                rms_norm(xi, (4,), w, 1e-5),
                *add_layer_norm(xi, r, (4,), w, w, 1e-5),
                *add_rms_norm(xi, r, (4,), w, 1e-5),
                batch_norm_train(xi, w, w, 1e-5, 1)[0],
                batch_norm_train(xi, w, w, 1e-5, 3)[0],
                batch_norm_eval(xi, w.detach(), w.detach(), w, w, 1e-5, 1),
                group_norm(xi, 2, w, w, 1e-5),
            ]
            torch.autograd.backward([o.sum() for o in outs])


from normkit.backends import _numba_transformer as _tf  # noqa: E402  (uses the helpers above)

_CAST_OPS = ("rms_norm_cast",)

BACKEND = Backend(
    name="numba",
    priority=20,
    description="fused parallel Numba CPU kernels (float32/float64; low precision via float32)",
    ops={
        "batch_norm_train": _upcast(batch_norm_train),
        "batch_norm_eval": _upcast(batch_norm_eval),
        "layer_norm": _upcast(layer_norm),
        "rms_norm": _upcast(rms_norm),
        "group_norm": _upcast(group_norm),
        "instance_norm": _upcast(instance_norm),
        "add_layer_norm": _upcast(add_layer_norm),
        "add_rms_norm": _upcast(add_rms_norm),
        "rms_norm_cast": _tf.rms_norm_cast,
        "dyt": _upcast(_tf.dyt),
        "modulate": _upcast(_tf.modulate),
    },
    supports=supports,
    prefers=prefers,
    extra={"out": OUT_OPS, "min_numel": MIN_NUMEL},
)
register(BACKEND)
