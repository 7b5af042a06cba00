"""The public functional API, mirroring :mod:`torch.nn.functional`.

Each function checks its arguments (errors say expected vs got and the fix), decides train/eval,
updates running statistics through the pure functions of :mod:`normkit._stats`, and hands the
math to :func:`normkit.backends.dispatch`. Every function takes ``backend="auto"`` (see
:mod:`normkit.backends.registry` for the auto rule).

Dtype policy: float16/bfloat16 inputs compute statistics in float32 and return the input dtype.
Memory format: outputs keep the input's (channels_last in → channels_last out), for every op.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor

from normkit import _reference, backends
from normkit._casting import CASTINGS, LAYER_NORM_CASTINGS, check_casting
from normkit._checks import (
    NAN_POLICIES,
    check_batch_norm_eps,
    check_input,
    check_nan_policy,
    check_normalized_shape,
    check_param,
    check_residual,
    expand_mask,
    feature_axis,
    keep_format,
    memory_format_of,
)
from normkit._stats import (
    MomentumConvention,
    NanPolicy,
    accumulation_dtype,
    bessel_correction,
    moments,
    running_average_factor,
    update_running_stats,
)

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "batch_renorm",
    "channel_norm",
    "dyt",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "layer_norm_2d",
    "local_response_norm",
    "memory_format_of",
    "modulate",
    "rms_norm",
    "update_running_buffers",
]

_NATIVE_DTYPES = (torch.float32, torch.float64)
_T = TypeVar("_T")
#: Running buffers of at most this many values are guarded through Python floats (see _guarded).
_SMALL_BUFFER = 128


# --------------------------------------------------------------------------- running statistics


@torch.no_grad()
def update_running_buffers(
    running_mean: Tensor,
    running_var: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int | Tensor | None,
    momentum: float | None,
    *,
    num_batches_tracked: Tensor | None = None,
    convention: MomentumConvention = "torch",
    nan_policy: NanPolicy = "skip",
) -> None:
    """Fold one batch's moments into running buffers, in place (the module-facing step).

    ``batch_var`` is the *biased* batch variance over ``count`` values; the torch convention
    stores the unbiased one (``n/(n−1)``), the Keras convention the biased one, as each library
    does. ``count=None`` means ``batch_var`` is already the value to average in. ``momentum=None`` (torch convention only) is the cumulative average over
    ``num_batches_tracked`` batches. ``nan_policy`` decides what a batch with non-finite moments
    does: ``"skip"`` leaves every buffer (and ``num_batches_tracked``) untouched and warns (on
    CPU; on accelerators the skip happens without a host sync and without the warning),
    ``"raise"`` raises :class:`FloatingPointError`, ``"propagate"`` updates as torch.nn would.

    >>> rm, rv = torch.zeros(2), torch.ones(2)
    >>> update_running_buffers(rm, rv, torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0]),
    ...                        momentum=0.5, count=4)
    >>> rm, rv                      # (1 − m)·old + m·batch; the variance made unbiased: 3·4/3
    (tensor([0.5000, 1.0000]), tensor([2.5000, 2.5000]))
    """
    check_nan_policy(nan_policy)
    if momentum is None and (convention != "torch" or num_batches_tracked is None):
        raise ValueError(
            "momentum=None (cumulative average) needs the torch convention and num_batches_tracked"
        )
    bessel = convention == "torch" and count is not None
    if not isinstance(count, Tensor) and _fused_update_ok(
        (running_mean, running_var), batch_mean, batch_var
    ):
        # CPU fast path: three in-place ops under the host guard of the fused native path
        seen = (
            0
            if momentum is not None or num_batches_tracked is None
            else int(num_batches_tracked) + 1
        )
        rate = float(running_average_factor(momentum, seen))
        w_new = rate if convention == "torch" else 1 - rate
        scale = count / (count - 1) if bessel and count is not None and count > 1 else 1.0

        # (an op less each: lerp_ for the mean, no detach of moments autograd does not record)
        mean = batch_mean.detach() if batch_mean.requires_grad else batch_mean
        var = batch_var.detach() if batch_var.requires_grad else batch_var

        def update() -> None:
            running_mean.lerp_(mean, w_new)
            running_var.mul_(1 - w_new).add_(var, alpha=w_new * scale)

        _, ok_host = _guarded(update, running_mean, running_var, nan_policy)
        if ok_host and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return
    var = bessel_correction(batch_var, count) if bessel else batch_var  # type: ignore[arg-type]
    ok = None
    if nan_policy != "propagate":
        ok = torch.isfinite(batch_mean).all() & torch.isfinite(var).all()
        check_on_host = nan_policy == "raise" or (
            batch_mean.device.type == "cpu" and not torch.compiler.is_compiling()
        )
        if check_on_host and not bool(ok):
            _nan_found(nan_policy)
    if num_batches_tracked is not None:
        step = 1 if ok is None else ok.to(num_batches_tracked.dtype)
        num_batches_tracked.add_(step)
    batches = num_batches_tracked if momentum is None and num_batches_tracked is not None else 0
    factor = running_average_factor(momentum, batches)
    new_mean, new_var = update_running_stats(
        running_mean, running_var, batch_mean, var, factor, convention=convention
    )
    if ok is not None:
        new_mean = torch.where(ok, new_mean, running_mean)
        new_var = torch.where(ok, new_var, running_var)
    running_mean.copy_(new_mean)
    running_var.copy_(new_var)


_NAN_MESSAGE = (
    "batch statistics contain NaN/Inf (the input batch is empty, has non-finite values or "
    "overflowed); running_mean/running_var were left unchanged"
)


def _nan_found(nan_policy: NanPolicy) -> None:
    """Raise (``"raise"``) or warn (``"skip"``) about a batch whose statistics are not finite."""
    if nan_policy == "raise":
        raise FloatingPointError(
            _NAN_MESSAGE.replace("were left unchanged", "were not updated")
            + "; check the input or pass nan_policy='skip'"
        )
    warnings.warn(_NAN_MESSAGE, RuntimeWarning, stacklevel=4)


def _fused_update_ok(running: Sequence[Tensor | None], *tensors: Tensor | None) -> bool:
    """Whether torch's native op may update ``running`` in place under a host-side NaN guard.

    The guard reads the buffers through NumPy views: plain CPU tensors of the input's dtype
    (float32 or float64), outside torch.compile tracing. Anything else takes the general path.
    """
    x = tensors[0]
    assert x is not None
    dtype = x.dtype
    if not x.is_cpu or dtype not in _NATIVE_DTYPES or torch.compiler.is_compiling():
        return False
    for t in tensors[1:]:  # (plain loops: this runs on every training call)
        if t is not None and t.dtype != dtype:
            return False
    for t in running:
        if t is not None and not (
            type(t) is Tensor and t.is_cpu and t.dtype == dtype and not t.requires_grad
        ):
            return False
    return True


def _cudnn(x: Tensor) -> bool:
    """The ``cudnn_enabled`` flag torch.nn.functional passes (read only where it matters)."""
    return x.is_cuda and torch.backends.cudnn.enabled


def _guarded(
    native: Callable[[], _T],
    running_mean: Tensor,
    running_var: Tensor,
    nan_policy: NanPolicy,
    *,
    report: bool = True,
) -> tuple[_T, bool]:
    """Run ``native`` (a torch op that updates the running buffers in place) and undo a
    non-finite update: returns ``(output, ok)``; ``report=False`` leaves the warning (or the
    error of ``nan_policy="raise"``) to the caller.

    Costs no ATen op. The previous values are kept on the host: as Python floats for small
    buffers (up to :data:`_SMALL_BUFFER` values: cheaper than NumPy there, whose calls between
    a tiny layer's torch ops cost a few percent of a small CNN's training step), else as NumPy
    copies. The new values are finite exactly when their sum (or dot product) is, short of an
    overflow, which is re-checked entry by entry. ``nan_policy="propagate"`` runs no guard.
    """
    if nan_policy == "propagate":
        return native(), True
    if running_mean.dim() == 1 and running_mean.numel() <= _SMALL_BUFFER:
        old = running_mean.tolist(), running_var.tolist()
        y = native()
        new = running_mean.tolist() + running_var.tolist()
        if math.isfinite(sum(new)) or all(map(math.isfinite, new)):
            return y, True
    else:
        mean_np, var_np = running_mean.numpy(), running_var.numpy()
        old = mean_np.copy(), var_np.copy()
        y = native()
        if np.isfinite(np.dot(mean_np, var_np)) or (
            np.isfinite(mean_np).all() and np.isfinite(var_np).all()
        ):
            return y, True
    # written back as the native op wrote them (no version bump: the output's graph, which
    # saved the buffers, stays differentiable)
    running_mean.numpy()[...], running_var.numpy()[...] = old
    if report:
        _nan_found(nan_policy)
    return y, False


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on ``tensors`` (the auto rule's direction)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _NoGradContext:
    """The ``ctx`` of an :class:`torch.autograd.Function` forward run outside autograd: keeps
    nothing (no backward will come)."""

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        pass


def _apply(fn: type[torch.autograd.Function], needs_grad: bool, *args: object) -> Tensor:
    """``fn.apply(*args)``, or where no input needs a gradient ``fn.forward`` called directly:
    the same ops without autograd's bookkeeping around them (~10 µs a call on CPU, a third of a
    small layer's forward)."""
    if needs_grad:
        return cast(Tensor, fn.apply(*args))
    return cast(Tensor, fn.forward(_NoGradContext(), *args))


def _batch_norm_fused(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
    nan_policy: NanPolicy,
    convention: MomentumConvention = "torch",
) -> Tensor:
    """Training batch norm with torch's fused running-statistics update (same ATen ops as
    ``torch.nn.BatchNorm*``), guarded against non-finite batches by :func:`_guarded`; the
    output keeps the input's memory format (the native op does).

    The Keras convention (``momentum`` the weight of the old value, the biased variance
    stored) runs the same op with the factor ``1 − momentum`` and the stored variance scaled
    by ``n/(n−1)`` before it and back after it: the op's unbiased ``n/(n−1)·σ²_B`` then lands
    as the biased one, ``momentum·old + (1 − momentum)·σ²_B``.
    """
    if running_mean is None or running_var is None:
        return torch.batch_norm(input, weight, bias, None, None, True, 0.0, eps, _cudnn(input))
    rm, rv, cudnn = running_mean, running_var, _cudnn(input)
    if convention == "keras":
        assert momentum is not None
        n = input.numel() // input.shape[1]
        factor, unbias = 1.0 - momentum, n / (n - 1)

        def native() -> Tensor:
            # scaled through NumPy: no version bump of a buffer that graphs save (as the
            # native op's own update of it)
            rv_np = rv.numpy()
            rv_np *= unbias
            y = torch.batch_norm(input, weight, bias, rm, rv, True, factor, eps, cudnn)
            rv_np /= unbias
            return y

    else:
        # momentum=None: the cumulative average over the batches seen, this one included
        nbt = num_batches_tracked
        factor = momentum if momentum is not None else 1.0 / (int(nbt) + 1)  # type: ignore[arg-type]

        def native() -> Tensor:
            return torch.batch_norm(input, weight, bias, rm, rv, True, factor, eps, cudnn)

    y, ok = _guarded(native, running_mean, running_var, nan_policy)
    if ok and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    return y


def _batch_norm_native(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    num_batches_tracked: Tensor | None,
    momentum_convention: MomentumConvention,
    nan_policy: NanPolicy,
    backend: str,
) -> Tensor | None:
    """The hot path of :func:`batch_norm` (no mask): torch's native op, for features at dim 1
    or last (a contiguous input, seen as rows), run directly when it computes what the
    general path would (plain CPU tensors of one native dtype, the backend resolved to torch, a
    valid ``eps`` and batch; in training under the NaN guard of :func:`_batch_norm_fused`, which
    also takes the Keras momentum convention). ``None`` otherwise, and where torch rejects the
    shapes: the general path then decides (another backend, casts, the reference math) and
    raises normkit's errors.
    """
    nd = input.ndim
    if nd < 2 or not -nd <= axis < nd or axis % nd not in (1, nd - 1):
        return None
    if axis % nd != 1 and not input.is_contiguous():
        return None
    if not eps > 0 or nan_policy not in NAN_POLICIES:
        return None
    if (running_mean is None) != (running_var is None):
        return None
    ax = axis % nd
    if training:
        if input.numel() <= input.shape[ax]:  # at most one value per channel, or empty
            return None
        if running_mean is not None and (
            momentum_convention not in ("torch", "keras")
            or (
                momentum is None and (momentum_convention != "torch" or num_batches_tracked is None)
            )
        ):
            return None
    elif running_mean is None or running_var is None:
        return None
    if not _fused_update_ok((running_mean, running_var), input, weight, bias):
        return None
    op = "batch_norm_train" if training else "batch_norm_eval"
    # features last (Keras' axis=-1) of a contiguous input: rows (N·…, C), a view, which is
    # how the kernels stream it; resolved on that view (the input's own strides read as
    # contiguous NCHW)
    xm = input if ax == 1 else input.view(-1, input.shape[ax])
    if backends.resolve(op, xm, backend, needs_grad=_needs_grad(input, weight, bias)).name != (
        "torch"
    ):
        return None
    try:
        if training:
            y = _batch_norm_fused(
                xm, running_mean, running_var, weight, bias, momentum, eps,
                num_batches_tracked, nan_policy, momentum_convention,
            )  # fmt: skip
        else:
            y = torch.batch_norm(
                xm, weight, bias, running_mean, running_var, False, 0.0, eps, False
            )
    except RuntimeError:
        return None
    return y if ax == 1 else y.view(input.shape)


@torch.no_grad()
def _update_running_buffers_k(
    running_mean: Tensor,
    running_var: Tensor,
    batch_means: Tensor,
    batch_vars: Tensor,
    count: int,
    momentum: float | None,
    num_batches_tracked: Tensor | None,
    nan_policy: NanPolicy,
) -> None:
    """:func:`update_running_buffers` for ``k`` batches in order (rows of ``batch_means`` and
    the biased ``batch_vars``), in closed form when every batch is finite and ``momentum`` fixed:

    .. math:: r_k = (1-m)^k\\, r_0 + \\sum_{i<k} m (1-m)^{k-1-i}\\, b_i

    (a handful of ops instead of ``k`` updates); otherwise batch by batch, so that
    ``nan_policy`` acts per batch.
    """
    k = batch_means.shape[0]
    unbiased = bessel_correction(batch_vars, count)
    closed = (
        momentum is not None
        and running_mean.dtype == batch_means.dtype
        and batch_means.device.type == "cpu"  # the finiteness check syncs with the host
        and not torch.compiler.is_compiling()
    )
    if closed and nan_policy != "propagate":
        closed = bool(
            torch.isfinite(batch_means.sum() + unbiased.sum())
            or (torch.isfinite(batch_means).all() and torch.isfinite(unbiased).all())
        )
    if not closed:
        for mu, var_i in zip(batch_means, batch_vars, strict=True):
            update_running_buffers(
                running_mean, running_var, mu, var_i, count, momentum,
                num_batches_tracked=num_batches_tracked, nan_policy=nan_policy,
            )  # fmt: skip
        return
    assert momentum is not None
    decay = [momentum * (1 - momentum) ** (k - 1 - i) for i in range(k)]
    weights = torch.tensor(decay, dtype=batch_means.dtype, device=batch_means.device)
    running_mean.mul_((1 - momentum) ** k).add_(weights @ batch_means)
    running_var.mul_((1 - momentum) ** k).add_(weights @ unbiased)
    if num_batches_tracked is not None:
        num_batches_tracked.add_(k)


# --------------------------------------------------------------------------- ops


def _twice(
    reference: Callable[..., Tensor], grad: Tensor, inputs: Sequence[Tensor | None]
) -> list[Tensor | None]:
    """The gradients of ``reference(*inputs)`` against ``grad``, with a graph: what the native
    autograd Functions below return when a backward runs with ``create_graph=True``. Their
    first-order backward treats the batch statistics they saved as constants, which is right
    for one derivative and wrong for a second (the statistics depend on the input), so a
    double backward (gradient penalties, meta-learning) goes through the composed reference
    math of the same function instead."""
    with torch.enable_grad():
        y = reference(*inputs)
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(y, wrt, grad, create_graph=True, allow_unused=True))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


class _MaskedBatchNormFn(torch.autograd.Function):
    """Training batch norm whose statistics ``mean``, ``var`` come from the ``count`` positions
    that the bool ``keep`` (broadcastable to ``input``, size 1 along the features) keeps.

    Forward: torch's batch norm in eval mode with those moments (every position normalized).
    Backward: every output depends on the kept inputs through ``μ``, ``σ²``, so with
    :math:`S_1 = \\sum_j dy_j`, :math:`S_2 = \\sum_j dy_j \\hat{x}_j` over all positions

    .. math:: dx_i = \\gamma\\,\\mathrm{invstd}\\,\\big(dy_i - [i\\ \\text{kept}]
        (S_1 + \\hat{x}_i S_2)/K\\big),\\quad d\\gamma = S_2,\\quad d\\beta = S_1:

    ``native_batch_norm_backward`` in eval mode gives ``S_2`` and ``S_1`` in one pass; the
    correction is one eval-mode batch norm (an affine map of ``x`` per feature), zeroed where
    not kept (so the padding, whatever its values, stays out of it), and one ``addcmul``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        keep: Tensor,
        count: int,
        eps: float,
    ) -> Tensor:
        ctx.save_for_backward(input, weight, bias, mean, var, keep)
        ctx.count, ctx.eps, ctx.has_bias = count, eps, bias is not None
        return torch.batch_norm(input, weight, bias, mean, var, False, 0.0, eps, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, bias, mean, var, keep = ctx.saved_tensors
        if torch.is_grad_enabled():  # (create_graph: see _twice)
            ref = functools.partial(_masked_reference, keep=keep, eps=ctx.eps)
            return *_twice(ref, grad, (input, weight, bias)), *(None,) * 5
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] and weight is not None
        need_b = ctx.needs_input_grad[2] and ctx.has_bias
        _, s2, s1 = torch.ops.aten.native_batch_norm_backward(
            grad, input, weight, mean, var, None, None, False, ctx.eps,
            [False, need_w or need_x, need_b or need_x],
        )  # fmt: skip
        dx = None
        if need_x:
            invstd = (var + ctx.eps).rsqrt()
            k1 = invstd if weight is None else weight * invstd
            coef = k1 / ctx.count
            # −(S1 + x̂·S2)·γ·invstd/K at every position, as one eval-mode batch norm (an
            # affine map per feature), zeroed where not kept, then + dy·γ·invstd
            correction = torch.batch_norm(
                input, -coef * s2, -coef * s1, mean, var, False, 0.0, ctx.eps, False
            )
            correction.masked_fill_(keep.logical_not(), 0.0)
            dx = torch.addcmul(correction, grad, k1.view((-1,) + (1,) * (input.ndim - 2)))
        return dx, s2 if need_w else None, s1 if need_b else None, *(None,) * 5


def _masked_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, *, keep: Tensor, eps: float
) -> Tensor:
    return _reference.batch_norm(x, None, None, weight, bias, True, eps, mask=keep)[0]


def _masked_batch_norm_native(
    input: Tensor,
    m: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
    nan_policy: NanPolicy,
) -> Tensor | None:
    """The masked training step of :func:`batch_norm` on torch's native ops, for features at
    dim 1, a mask ``m`` (expanded) constant along them and torch's momentum convention: the
    kept positions gathered into ``(K, C)``, whose moments (and the running update, fused,
    under the NaN guard of :func:`_guarded`) ``torch.batch_norm_update_stats`` takes; then
    :class:`_MaskedBatchNormFn`. Non-finite padding never enters the statistics. ``None``
    elsewhere, and for fewer than two kept positions (the general path raises)."""
    if m.ndim != input.ndim or m.shape[1] != 1 or input.ndim < 3:
        return None
    if running_mean is not None and momentum is None and num_batches_tracked is None:
        return None
    if not _fused_update_ok((running_mean, running_var), input, weight, bias):
        return None
    kept = input.movedim(1, -1)[m.squeeze(1).expand(input.shape[:1] + input.shape[2:])]
    if kept.shape[0] <= 1:
        return None
    nbt = num_batches_tracked
    factor = momentum if momentum is not None else 1.0 / (int(nbt) + 1)  # type: ignore[arg-type]
    with torch.no_grad():
        if running_mean is None or running_var is None:
            mean, var = torch.batch_norm_update_stats(kept, None, None, 0.0)
        else:
            (mean, var), ok = _guarded(
                lambda: torch.batch_norm_update_stats(kept, running_mean, running_var, factor),
                running_mean,
                running_var,
                nan_policy,
            )
            if ok and nbt is not None:
                nbt.add_(1)
    needs_grad = _needs_grad(input, weight, bias)
    return _apply(
        _MaskedBatchNormFn, needs_grad, input, weight, bias, mean, var, m, kept.shape[0], eps
    )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    momentum_convention: MomentumConvention = "torch",
    nan_policy: NanPolicy = "skip",
    mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Batch normalization (Ioffe & Szegedy 2015, arXiv:1502.03167) over any feature axis.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\gamma + \\beta

    Statistics are taken per feature (the entries along ``axis``) over every other axis. In
    training the batch's biased moments normalize, and the running buffers (if given) are updated
    in place like :func:`torch.nn.functional.batch_norm` (unbiased running variance; see
    :func:`update_running_buffers` for ``momentum_convention``, ``momentum=None``, ``nan_policy``).
    In eval the running buffers normalize.

    ``mask`` (bool; training only, ignored in eval): only ``True`` positions enter the batch
    statistics and hence the running averages (padded sequence positions), as Keras' ``mask=``;
    every position is normalized. Shaped like the input without the feature axis (``(N, L)``
    for ``(N, C, L)`` or ``(N, L, C)``) or broadcastable to the input. The masked path runs
    torch's native ops where it can (CPU float32/float64, features at dim 1, a mask constant
    along them, torch's momentum convention) and the reference math otherwise (``backend`` is
    not used).

    Shapes: ``input`` ``(N, C, *)`` for ``axis=1`` (torch), ``(N, *, C)`` for ``axis=-1``
    (Keras/channels-last); ``running_*``, ``weight``, ``bias``: ``(C,)``.

    >>> x = torch.randn(16, 8, 5, 5)
    >>> rm, rv = torch.zeros(8), torch.ones(8)
    >>> y = batch_norm(x, rm, rv, training=True)
    """
    if mask is None or not training:  # (eval ignores the mask)
        y = _batch_norm_native(
            input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
            num_batches_tracked, momentum_convention, nan_policy, backend,
        )  # fmt: skip
        if y is not None:
            return y
    op = "batch_norm"
    check_input(input, op, 2 if axis in (1, -1) else 1)
    ax = feature_axis(input, axis, op)
    c = input.shape[ax]
    for t, name in (
        (weight, "weight"),
        (bias, "bias"),
        (running_mean, "running_mean"),
        (running_var, "running_var"),
    ):
        check_param(t, name, (c,), op)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    check_batch_norm_eps(eps, training, op)
    if training:
        m = None if mask is None else expand_mask(mask, input, op, insert_at=ax)
        if m is not None and ax == 1 and momentum_convention == "torch" and eps > 0:
            y = _masked_batch_norm_native(
                input, m, running_mean, running_var, weight, bias, momentum, eps,
                num_batches_tracked, nan_policy,
            )  # fmt: skip
            if y is not None:
                return y
        count: int | Tensor
        if m is None:
            count = input.numel() // max(c, 1)
            least = count
        else:
            dims = [d for d in range(input.ndim) if d != ax]
            count = m.expand(input.shape).sum(dim=dims).to(accumulation_dtype(input.dtype))
            least = int(count.min().item())
        if m is None and count == 0:
            # An empty batch, as torch.nn.BatchNorm: empty output, running statistics untouched,
            # num_batches_tracked counted.
            y = backends.dispatch(
                "batch_norm_train", input, weight, bias, eps, ax, backend=backend
            )[0]
            if num_batches_tracked is not None and running_mean is not None:
                with torch.no_grad():
                    num_batches_tracked.add_(1)
            return keep_format(y, input)
        if least <= 1:
            raise ValueError(
                f"BatchNorm in training mode needs more than one value per channel (got input of "
                f"shape {tuple(input.shape)}, {least} value per channel"
                f"{' inside the mask' if m is not None else ''}); use eval mode, "
                "GroupNorm/LayerNorm, or normkit.nn.BatchRenorm"
            )
        if m is None:
            y, mean, var = backends.dispatch(
                "batch_norm_train", input, weight, bias, eps, ax, backend=backend
            )
        else:
            y, mean, var = _reference.batch_norm(
                input, None, None, weight, bias, True, eps, ax, mask=m
            )
        if running_mean is not None and running_var is not None:
            update_running_buffers(
                running_mean,
                running_var,
                mean,
                var,
                count,
                momentum,
                num_batches_tracked=num_batches_tracked,
                convention=momentum_convention,
                nan_policy=nan_policy,
            )
    else:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{op} in eval mode (training=False) needs running_mean and running_var; pass "
                "training=True to normalize with the batch statistics"
            )
        y = backends.dispatch(
            "batch_norm_eval",
            input,
            running_mean,
            running_var,
            weight,
            bias,
            eps,
            ax,
            backend=backend,
        )
    return keep_format(y, input)


class _RowMaskedLayerNormFn(torch.autograd.Function):
    """Layer norm whose mask keeps or drops whole rows (the normalized slices), on torch's
    native ops: ``rows`` are the indices of the dropped rows of ``input.view(-1, D)``.

    A dropped row has no kept value, so its moments are 0 and 0 (:func:`normkit._stats.moments`)
    and it is the affine map ``y = x·(1/√ε)·γ + β``; every other row is plain layer norm. So:
    forward, native layer norm over all rows, then the dropped rows' outputs recomputed;
    backward, the dropped rows' statistics set to ``(0, 1/√ε)`` and ``native_layer_norm_backward``
    with them (which gives the right ``dγ``, ``dβ``), then the dropped rows' input
    gradient replaced by the affine map's ``dy·γ/√ε`` (no statistics depend on them).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        shape: list[int],
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        rows: Tensor,
    ) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(input, shape, weight, bias, eps)
        scale, d = eps**-0.5, math.prod(shape)
        w = weight if weight is None or weight.ndim == 1 else weight.reshape(-1)
        # the dropped rows' affine map, weight and 1/√ε folded into one per-feature factor
        factor = None if w is None else w * scale
        if rows.numel():
            xm = input.view(-1, d).index_select(0, rows)
            b = bias if bias is None or bias.ndim == 1 else bias.reshape(-1)
            if b is not None and factor is not None:
                ym = torch.addcmul(b, xm, factor)
            else:
                ym = xm * (scale if factor is None else factor)
                ym = ym if b is None else ym + b
            y.view(-1, d).index_copy_(0, rows, ym)
        # mean, rstd as layer norm left them: the backward sets the dropped rows' (0, 1/√ε)
        ctx.save_for_backward(input, weight, bias, mean, rstd, rows, factor)
        ctx.shape, ctx.scale, ctx.d, ctx.eps = shape, scale, d, eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, bias, mean, rstd, rows, factor = ctx.saved_tensors
        if torch.is_grad_enabled():  # (create_graph: see _twice)
            keep = torch.ones(mean.numel(), dtype=torch.bool, device=input.device)
            keep = keep.index_fill(0, rows, False).view(mean.shape)  # (N..., 1, ...)
            ref = functools.partial(_reference.layer_norm, eps=ctx.eps, mask=keep)
            dx, dw, db = _twice(
                lambda x, w, b: ref(x, ctx.shape, w, b), grad, (input, weight, bias)
            )
            return dx, None, dw, db, None, None
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        if rows.numel():  # (out of place: a retained graph may run this backward again)
            mean = mean.view(-1).index_fill(0, rows, 0.0).view(mean.shape)
            rstd = rstd.view(-1).index_fill(0, rows, ctx.scale).view(rstd.shape)
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            grad, input, ctx.shape, mean, rstd, weight, bias,
            [need_x, need_w and weight is not None, need_b and bias is not None],
        )  # fmt: skip
        if need_x and rows.numel():
            gm = grad.reshape(-1, ctx.d).index_select(0, rows)
            dx.view(-1, ctx.d).index_copy_(0, rows, gm * (ctx.scale if factor is None else factor))
        return dx, None, dw, db, None, None


def _dropped_rows(m: Tensor, input: Tensor, k: int) -> Tensor | None:
    """The indices of the rows of ``input.view(-1, D)`` that the (expanded, bool) mask ``m``
    drops, where ``m`` keeps or drops whole normalized slices of the last ``k`` dims of a
    contiguous float32/float64 ``input``; ``None`` for any other mask (the reference path)."""
    if (
        m.ndim != input.ndim
        or any(s != 1 for s in m.shape[input.ndim - k :])
        or not input.is_contiguous()
        or input.dtype not in _NATIVE_DTYPES
        or torch.compiler.is_compiling()  # nonzero's data-dependent size: the reference path
    ):
        return None
    lead = input.shape[: input.ndim - k]
    keep = m if m.shape[: input.ndim - k] == lead else m.expand(*lead, *m.shape[input.ndim - k :])
    return torch.logical_not(keep).reshape(-1).nonzero().view(-1)  # (trailing dims are 1)


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    mask: Tensor | None = None,
    casting: str | None = None,
    offset: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Layer normalization (Ba, Kiros & Hinton 2016, arXiv:1607.06450) over the trailing dims.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\odot (o + \\gamma) + \\beta

    Statistics per sample over the last ``len(normalized_shape)`` dims; ``weight``/``bias`` have
    shape ``normalized_shape``. ``mask`` (bool, as Flax's ``LayerNorm(mask=)``): only ``True``
    entries enter the statistics; useful when ``normalized_shape`` spans padded positions, e.g.
    ``(L, C)`` with a ``(N, L)`` mask. A mask equal to the input's leading dims is extended on the
    right; otherwise it must broadcast to the input. A mask that keeps or drops whole normalized
    slices (an ``(N, L)`` mask with ``normalized_shape`` ``(C,)``) runs torch's native layer norm
    (CPU float32/float64); any other mask runs the reference math.

    ``casting`` (``"torch"``, ``"llama"``, ``"gemma"``, ``"fp32"``) fixes where the computation
    casts between dtypes, bit for bit as the named stack does (:mod:`normkit._casting`);
    ``None`` is normkit's default (statistics in float32, one cast at the end, any summation
    order). ``offset`` ``o`` scales by ``o + weight`` (zero-centred weights: ``o = 1``).

    >>> x = torch.randn(4, 10, 32)
    >>> y = layer_norm(x, (32,))
    """
    op = "layer_norm"
    check_input(input, op)
    shape = check_normalized_shape(input, normalized_shape, op)
    check_param(weight, "weight", shape, op)
    check_param(bias, "bias", shape, op)
    if casting is not None:
        check_casting(casting, LAYER_NORM_CASTINGS, op)
        if mask is not None:
            raise ValueError(f"{op}: mask= and casting= cannot be combined; drop one of them")
        y = backends.dispatch(
            "layer_norm_cast",
            input,
            shape,
            weight,
            bias,
            eps,
            casting,
            float(offset),
            backend=backend,
        )
        return keep_format(y, input)
    if offset and weight is not None:
        weight = weight + offset
    if mask is not None:
        m = expand_mask(mask, input, op, insert_at=None)
        rows = _dropped_rows(m, input, len(shape))
        same = all(t is None or t.dtype == input.dtype for t in (weight, bias))
        if rows is not None and same and eps > 0:
            needs_grad = _needs_grad(input, weight, bias)
            return _apply(
                _RowMaskedLayerNormFn, needs_grad, input, list(shape), weight, bias, eps, rows
            )
        y = _reference.layer_norm(input, shape, weight, bias, eps, mask=m)
    else:
        y = backends.dispatch("layer_norm", input, shape, weight, bias, eps, backend=backend)
    return keep_format(y, input)


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    casting: str | None = None,
    offset: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Root-mean-square normalization (Zhang & Sennrich 2019, arXiv:1910.07467).

    .. math:: y = \\frac{x}{\\sqrt{\\frac1n\\sum_i x_i^2 + \\epsilon}} \\odot (o + \\gamma)

    ``eps=None`` uses ``torch.finfo(input.dtype).eps`` as :func:`torch.nn.functional.rms_norm`.
    ``casting`` (``"torch"``, ``"llama"``, ``"gemma"``, ``"t5"``, ``"fp32"``) fixes where the
    computation casts between dtypes, bit for bit as the named implementation does (the
    formulas: :mod:`normkit._casting`); ``None`` is normkit's default (statistics in float32,
    one cast at the end, any summation order). ``offset`` ``o`` scales by ``o + weight``
    (Gemma's zero-centred weights: ``o = 1``).

    >>> y = rms_norm(torch.randn(4, 32), (32,))
    >>> w = torch.zeros(32)  # zero-centred: scale 1 + w
    >>> y = rms_norm(torch.randn(4, 32).bfloat16(), (32,), w, 1e-6, casting="gemma", offset=1.0)
    """
    op = "rms_norm"
    check_input(input, op)
    shape = check_normalized_shape(input, normalized_shape, op)
    check_param(weight, "weight", shape, op)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    if casting is not None:
        check_casting(casting, CASTINGS, op)
        y = backends.dispatch(
            "rms_norm_cast", input, shape, weight, eps, casting, float(offset), backend=backend
        )
        return keep_format(y, input)
    if offset and weight is not None:
        weight = weight + offset
    y = backends.dispatch("rms_norm", input, shape, weight, eps, backend=backend)
    return keep_format(y, input)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> Tensor:
    """Group normalization (Wu & He 2018, arXiv:1803.08494).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}}\\gamma_c + \\beta_c

    Channels (dim 1) split into ``num_groups`` groups; statistics per sample and group.

    >>> y = group_norm(torch.randn(2, 32, 8, 8), 8)
    """
    op = "group_norm"
    check_input(input, op, 2)
    c = input.shape[1]
    if num_groups < 1 or c % num_groups:
        raise ValueError(
            f"{op}: num_groups={num_groups} must divide the number of channels {c} (input shape "
            f"{tuple(input.shape)}); pick a divisor of {c}"
        )
    check_param(weight, "weight", (c,), op)
    check_param(bias, "bias", (c,), op)
    y = backends.dispatch("group_norm", input, num_groups, weight, bias, eps, backend=backend)
    return keep_format(y, input)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    nan_policy: NanPolicy = "skip",
    backend: str = "auto",
) -> Tensor:
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016, arXiv:1607.08022).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    Statistics per sample and channel over the positions (dims ≥ 2). With running buffers and
    ``use_input_stats``, they are updated with the batch-average of the per-instance mean and
    unbiased variance, as :func:`torch.nn.functional.instance_norm` does.

    >>> y = instance_norm(torch.randn(2, 3, 16, 16))
    """
    op = "instance_norm"
    check_input(input, op, 3)
    c = input.shape[1]
    for t, name in (
        (weight, "weight"),
        (bias, "bias"),
        (running_mean, "running_mean"),
        (running_var, "running_var"),
    ):
        check_param(t, name, (c,), op)
    if use_input_stats:
        positions = math.prod(input.shape[2:])
        if positions == 1:
            raise ValueError(
                f"{op} needs more than one spatial element per channel (got input of shape "
                f"{tuple(input.shape)}); use BatchNorm or LayerNorm for inputs without positions"
            )
        if running_mean is not None and running_var is not None:
            chosen = backends.resolve("instance_norm", input, backend)
            if chosen.name == "torch" and _fused_update_ok(
                (running_mean, running_var), input, weight, bias
            ):
                y, _ = _guarded(
                    lambda: torch.instance_norm(
                        input,
                        weight,
                        bias,
                        running_mean,
                        running_var,
                        True,
                        momentum,
                        eps,
                        _cudnn(input),
                    ),
                    running_mean,
                    running_var,
                    nan_policy,
                )
                return keep_format(y, input)
        y = backends.dispatch("instance_norm", input, weight, bias, eps, backend=backend)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                mean, var = moments(input, list(range(2, input.ndim)))
                unbiased = bessel_correction(var, positions)
            update_running_buffers(
                running_mean,
                running_var,
                mean.mean(0),
                unbiased.mean(0),
                None,
                momentum,
                nan_policy=nan_policy,
            )
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op} with use_input_stats=False needs running_mean and running_var")
        y = backends.dispatch(
            "batch_norm_eval",
            input,
            running_mean,
            running_var,
            weight,
            bias,
            eps,
            1,
            backend=backend,
        )
    return keep_format(y, input)


def channel_norm(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> Tensor:
    """Channel normalization (Dai & Heckel 2019, arXiv:1907.09539): each channel of each sample
    centred and scaled by its own statistics over the positions, then a per-channel affine.

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    The same statistics as instance norm, without running buffers (train and eval agree).

    >>> y = channel_norm(torch.randn(2, 3, 64), torch.ones(3), torch.zeros(3))
    """
    return instance_norm(input, None, None, weight, bias, True, 0.0, eps, backend=backend)


def layer_norm_2d(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> Tensor:
    """Layer norm across the channels (dim 1) at each position, for channels-first inputs.

    .. math:: y_{n,:,p} = \\frac{x_{n,:,p} - \\mu_{n,p}}{\\sqrt{\\sigma^2_{n,p} + \\epsilon}} \\odot \\gamma + \\beta

    The ``LayerNorm2d`` of ConvNeXt (Liu et al. 2022, arXiv:2201.03545) and timm; any ndim ≥ 2.
    Channels-last inputs take the fast path (the channel dim is already innermost).

    >>> y = layer_norm_2d(torch.randn(2, 96, 14, 14), torch.ones(96), torch.zeros(96))
    """
    op = "layer_norm_2d"
    check_input(input, op, 2)
    c = input.shape[1]
    check_param(weight, "weight", (c,), op)
    check_param(bias, "bias", (c,), op)
    y = backends.dispatch(
        "layer_norm", input.movedim(1, -1), (c,), weight, bias, eps, backend=backend
    ).movedim(-1, 1)
    return keep_format(y, input)


def local_response_norm(
    input: Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    *,
    backend: str = "auto",
) -> Tensor:
    """Local response normalization across channels (Krizhevsky, Sutskever & Hinton 2012,
    AlexNet §3.3), as :func:`torch.nn.functional.local_response_norm`.

    .. math:: y_c = x_c \\Big(k + \\frac{\\alpha}{n}
        \\sum_{c'=c-\\lfloor n/2\\rfloor}^{c+\\lfloor (n-1)/2\\rfloor} x_{c'}^2\\Big)^{-\\beta}

    with ``n = size`` and zeros beyond the first and last channel. Shapes: ``input`` ``(N, C, *)``
    with at least one position dim; the output has its shape (and memory format). An empty
    input is returned as is, as torch does.

    >>> y = local_response_norm(torch.randn(2, 16, 8, 8), size=5, alpha=1e-4, beta=0.75, k=2.0)
    """
    op = "local_response_norm"
    if input.ndim < 3:
        raise ValueError(
            f"{op} expects input (N, C, *) with at least one position dim (got {input.ndim}D input "
            f"of shape {tuple(input.shape)}); add one with input.unsqueeze(-1)"
        )
    if size < 1:
        raise ValueError(f"{op}: size must be a positive int (got {size})")
    if input.numel() == 0:
        return input
    y = backends.dispatch(op, input, size, alpha, beta, k, backend=backend)
    return keep_format(y, input)


# --------------------------------------------------------------------------- training-time family


class _BatchRenormFn(torch.autograd.Function):
    """Training batch renorm given the batch moments: batch norm with the corrected affine.

    .. math:: y = \\hat{x}\\,(\\gamma r) + (\\gamma d + \\beta),\\quad
        \\hat{x} = (x - \\mu_B)\\,\\mathrm{invstd}_B

    Forward: one pass, torch's batch norm in eval mode with ``(μ_B, σ²_B)`` as its statistics.
    Backward: ``native_batch_norm_backward`` in training mode (the batch statistics depend on
    ``x``: torch's own formula) with weight ``γ·r``; ``r``, ``d`` are constants, so
    ``dγ = dw_eff·r + db_eff·d`` and ``dβ = db_eff``. Two passes each way, as torch.nn's batch
    norm, where composing batch norm with the affine costs a third (the moments again).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        invstd: Tensor,
        r: Tensor,
        d: Tensor,
        eps: float,
    ) -> Tensor:
        w_eff = r if weight is None else weight * r
        b_eff = d if weight is None else weight * d
        if bias is not None:
            b_eff = b_eff + bias
        ctx.save_for_backward(input, weight, bias, w_eff, mean, invstd, r, d)
        ctx.eps = eps
        ctx.affine = weight is not None, bias is not None
        return torch.batch_norm(input, w_eff, b_eff, mean, var, False, 0.0, eps, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, bias, w_eff, mean, invstd, r, d = ctx.saved_tensors
        if torch.is_grad_enabled():  # (create_graph: see _twice)
            ref = functools.partial(_renorm_reference, r=r, d=d, eps=ctx.eps)
            return *_twice(ref, grad, (input, weight, bias)), *(None,) * 6
        has_w, has_b = ctx.affine
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w = need_w and has_w
        need_b = need_b and has_b
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad, input, w_eff, None, None, mean, invstd, True, ctx.eps,
            [need_x, need_w, need_w or need_b],
        )  # fmt: skip
        return (
            gx if need_x else None,
            torch.addcmul(gw * r, gb, d) if need_w else None,
            gb if need_b else None,
            *(None,) * 6,
        )


def _renorm_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, *, r: Tensor, d: Tensor, eps: float
) -> Tensor:
    """Batch renorm's training output, composed: ``x̂·(γr) + (γd + β)`` with ``r``, ``d``
    constants (the paper's stop-gradient)."""
    w_eff = r if weight is None else weight * r
    b_eff = d if weight is None else weight * d
    b_eff = b_eff if bias is None else b_eff + bias
    return _reference.batch_norm(x, None, None, w_eff, b_eff, True, eps)[0]


def _batch_renorm_native(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
    r_max: float | Tensor,
    d_max: float | Tensor,
    axis: int,
    num_batches_tracked: Tensor | None,
    nan_policy: NanPolicy,
    backend: str,
) -> Tensor | None:
    """The hot path of :func:`batch_renorm` in training (no mask): two passes over the input
    each way, as torch.nn's batch norm.

    ``torch.batch_norm_update_stats`` takes the batch moments and updates the running buffers
    in place (torch's fused update, under the NaN guard of :func:`_guarded`); ``r``, ``d``
    follow from the buffers as they were before it; :class:`_BatchRenormFn` normalizes. Runs
    where :func:`_batch_norm_native` would run batch norm's training step (plain CPU tensors of
    one native dtype, features at dim 1, the backend resolved to torch); ``None`` otherwise
    (the general path decides and raises normkit's errors).

    ``auto`` takes this path even where it picks numba for batch norm itself: composed with
    batch norm, any backend costs a third pass for the moments that ``r``, ``d`` need first
    (small contiguous NCHW, fwd+bwd: 0.9x torch.nn's batch norm here, 1.1-1.8x through numba).
    """
    nd = input.ndim
    if nd < 2 or not -nd <= axis < nd or axis % nd != 1:
        return None
    if not eps > 0 or nan_policy not in NAN_POLICIES:
        return None
    if momentum is None and num_batches_tracked is None:
        return None
    c = input.shape[1]
    if input.numel() <= c:  # at most one value per channel, or empty
        return None
    for t in (running_mean, running_var, weight, bias):
        if t is not None and t.shape != (c,):
            return None
    if not _fused_update_ok((running_mean, running_var), input, weight, bias):
        return None
    for lim in (r_max, d_max):
        if isinstance(lim, Tensor) and not (lim.is_cpu and lim.numel() == 1):
            return None
    if backend not in ("auto", "torch"):
        return None
    nbt = num_batches_tracked
    factor = momentum if momentum is not None else 1.0 / (int(nbt) + 1)  # type: ignore[arg-type]
    with torch.no_grad():
        inv_sigma = (running_var + eps).rsqrt()  # the running statistics before this batch
        mu = running_mean.clone()
        (mean, var), ok = _guarded(
            lambda: torch.batch_norm_update_stats(input, running_mean, running_var, factor),
            running_mean,
            running_var,
            nan_policy,
        )
        if ok and nbt is not None:
            nbt.add_(1)
        invstd = (var + eps).rsqrt()
        r, d = inv_sigma / invstd, (mean - mu) * inv_sigma  # σ_B/σ and (μ_B − μ)/σ, clipped:
        if isinstance(r_max, Tensor) or isinstance(d_max, Tensor):  # a warm-up schedule
            r_lim = torch.as_tensor(r_max, dtype=input.dtype)
            d_lim = torch.as_tensor(d_max, dtype=input.dtype)
            r, d = torch.clamp(r, 1 / r_lim, r_lim), torch.clamp(d, -d_lim, d_lim)
        else:
            r, d = r.clamp_(1 / r_max, r_max), d.clamp_(-d_max, d_max)
    needs_grad = _needs_grad(input, weight, bias)
    return _apply(_BatchRenormFn, needs_grad, input, weight, bias, mean, var, invstd, r, d, eps)


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    r_max: float | Tensor = 3.0,
    d_max: float | Tensor = 5.0,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    nan_policy: NanPolicy = "skip",
    mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Batch renormalization (Ioffe 2017, arXiv:1702.03275): batch norm whose training output is
    corrected towards the running statistics, so that train and eval agree for small or
    non-i.i.d. batches.

    .. math::
        r = \\mathrm{clip}_{[1/r_{max},\\,r_{max}]}\\Big(\\frac{\\sigma_B}{\\sigma}\\Big),\\quad
        d = \\mathrm{clip}_{[-d_{max},\\,d_{max}]}\\Big(\\frac{\\mu_B - \\mu}{\\sigma}\\Big),\\quad
        y = \\gamma\\Big(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\Big) + \\beta

    with :math:`\\sigma_B = \\sqrt{\\mathrm{Var}_B[x] + \\epsilon}`, :math:`\\sigma = \\sqrt{\\text{running\\_var} + \\epsilon}`,
    :math:`\\mu` the running mean (before this batch's update) and ``r``, ``d`` treated as
    constants by autograd. That is batch norm with weight ``γ·r`` and bias ``γ·d + β``, which is
    how it runs (any backend); ``r_max=1, d_max=0`` gives exactly :func:`batch_norm`. The running
    statistics update as batch norm's. Eval is batch norm with the running statistics.

    ``r_max`` ≥ 1 and ``d_max`` ≥ 0 may be tensors (a warm-up schedule without host syncs).
    Shapes as :func:`batch_norm`; ``mask`` as there.

    >>> rm, rv = torch.zeros(8), torch.ones(8)
    >>> y = batch_renorm(torch.randn(4, 8, 5, 5), rm, rv, training=True, r_max=2.0, d_max=1.0)
    """
    op = "batch_renorm"
    if running_mean is None or running_var is None:
        raise ValueError(
            f"{op} needs running_mean and running_var (the correction r, d is relative to them); "
            "use batch_norm for a norm without running statistics"
        )
    check_batch_norm_eps(eps, training, op)
    for value, low, name in ((r_max, 1.0, "r_max"), (d_max, 0.0, "d_max")):
        if not isinstance(value, Tensor) and value < low:
            raise ValueError(
                f"{op}: {name} must be >= {low:g} (got {value}); r_max=1, d_max=0 is plain batch "
                "norm and larger values let the running statistics correct the batch ones"
            )
    if not training:
        return batch_norm(
            input, running_mean, running_var, weight, bias, False, momentum, eps,
            axis=axis, backend=backend,
        )  # fmt: skip
    if mask is None:
        y = _batch_renorm_native(
            input, running_mean, running_var, weight, bias, momentum, eps, r_max, d_max, axis,
            num_batches_tracked, nan_policy, backend,
        )  # fmt: skip
        if y is not None:
            return y
    check_input(input, op, 2)
    ax = feature_axis(input, axis, op)
    with torch.no_grad():
        m = None if mask is None else expand_mask(mask, input, op, insert_at=ax)
        dims = [d for d in range(input.ndim) if d != ax]
        mean, var = moments(input, dims, mask=m)
        rm = running_mean.to(mean.dtype)
        sigma = torch.sqrt(running_var.to(mean.dtype) + eps)
        r_lim = torch.as_tensor(r_max, dtype=mean.dtype, device=mean.device)
        d_lim = torch.as_tensor(d_max, dtype=mean.dtype, device=mean.device)
        r = torch.clamp(torch.sqrt(var + eps) / sigma, 1 / r_lim, r_lim)
        d = torch.clamp((mean - rm) / sigma, -d_lim, d_lim)
    w_eff = r if weight is None else weight * r
    b_eff = d if weight is None else weight * d
    if bias is not None:
        b_eff = b_eff + bias
    return batch_norm(
        input,
        running_mean,
        running_var,
        w_eff,
        b_eff,
        True,
        momentum,
        eps,
        axis=axis,
        num_batches_tracked=num_batches_tracked,
        nan_policy=nan_policy,
        mask=mask,
        backend=backend,
    )


class _GhostBatchNormFn(torch.autograd.Function):
    """Training ghost batch norm on torch's native batch norm, one call per virtual batch.

    Forward: ``native_batch_norm.out`` on each virtual batch (a dim-0 slice, so a view in
    either memory format), writing its slice of one output and updating the running buffers in
    place, in order (Algorithm 1 of the paper), under one NaN guard (:func:`_guarded`); when
    it trips, the updates are redone one virtual batch at a time, each guarded, so that a
    virtual batch with non-finite statistics is skipped and the others count. Backward: ``native_batch_norm_backward.out`` per virtual batch into one
    input gradient; the parameter gradients are the sums over the virtual batches. No copy of
    the input or the output: a single batch-norm call over ``(virtual batch, feature)`` pairs
    needs two (the pairs are not one dim of any view).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        virtual_batch_size: int,
        momentum: float | None,
        eps: float,
        num_batches_tracked: Tensor | None,
        nan_policy: NanPolicy,
    ) -> Tensor:
        xs = input.split(virtual_batch_size)
        y = torch.empty_like(input)
        c = input.shape[1]
        means, invstds = input.new_empty(len(xs), c), input.new_empty(len(xs), c)
        ys, ms, vs = y.split(virtual_batch_size), means.unbind(), invstds.unbind()
        parts = list(zip(xs, ys, ms, vs, strict=True))
        nbt = num_batches_tracked
        seen = 0 if momentum is not None else int(nbt)  # type: ignore[arg-type]

        def steps(rm: Tensor | None, rv: Tensor | None) -> None:
            for i, (x_i, y_i, mean_i, invstd_i) in enumerate(parts):
                factor = momentum if momentum is not None else 1.0 / (seen + i + 1)
                torch.ops.aten.native_batch_norm.out(
                    x_i, weight, bias, rm, rv, True, factor, eps,
                    out=y_i, save_mean=mean_i, save_invstd=invstd_i,
                )  # fmt: skip

        if running_mean is None or running_var is None:
            steps(None, None)
        else:  # one guard around all the virtual batches' updates
            _, ok = _guarded(
                lambda: steps(running_mean, running_var),
                running_mean,
                running_var,
                nan_policy,
                report=False,
            )
            if ok and nbt is not None:
                nbt.add_(len(parts))
            elif not ok:  # the buffers are back as before: update per virtual batch, each guarded
                for x_i in xs:
                    factor = momentum if momentum is not None else 1.0 / (seen + 1)
                    update = functools.partial(
                        torch.batch_norm_update_stats, x_i, running_mean, running_var, factor
                    )
                    if (
                        _guarded(update, running_mean, running_var, nan_policy)[1]
                        and nbt is not None
                    ):
                        nbt.add_(1)
                        seen += 1
        ctx.save_for_backward(input, weight, bias, means, invstds)
        ctx.virtual_batch_size, ctx.eps, ctx.has_bias = virtual_batch_size, eps, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, bias, means, invstds = ctx.saved_tensors
        v = ctx.virtual_batch_size
        if torch.is_grad_enabled():  # (create_graph: see _twice)
            ref = functools.partial(_ghost_reference, virtual_batch_size=v, eps=ctx.eps)
            return *_twice(ref, grad, (input, weight, bias)), *(None,) * 7
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] and weight is not None
        need_b = ctx.needs_input_grad[2] and ctx.has_bias
        k, c = means.shape
        # all three outputs always (the .out form takes no masked-off output; the sums behind
        # dγ, dβ are the input gradient's anyway)
        gx, gw, gb = torch.empty_like(input), input.new_empty(k, c), input.new_empty(k, c)
        for args in zip(
            grad.split(v), input.split(v), means.unbind(), invstds.unbind(), gx.split(v),
            gw.unbind(), gb.unbind(), strict=True,
        ):  # fmt: skip
            g_i, x_i, mean_i, invstd_i, gx_i, gw_i, gb_i = args
            torch.ops.aten.native_batch_norm_backward.out(
                g_i, x_i, weight, None, None, mean_i, invstd_i, True, ctx.eps,
                [True, True, True], out0=gx_i, out1=gw_i, out2=gb_i,
            )  # fmt: skip
        return (
            gx if need_x else None,
            gw.sum(0) if need_w else None,
            gb.sum(0) if need_b else None,
            *(None,) * 7,
        )


def _ghost_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, *, virtual_batch_size: int, eps: float
) -> Tensor:
    """Ghost batch norm's training output, composed: batch norm per virtual batch."""
    parts = [
        _reference.batch_norm(x_i, None, None, weight, bias, True, eps)[0]
        for x_i in x.split(virtual_batch_size)
    ]
    return torch.cat(parts)


def _ghost_native_ok(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    ax: int,
    num_batches_tracked: Tensor | None,
    backend: str,
) -> bool:
    """Whether :class:`_GhostBatchNormFn` runs a training step of :func:`ghost_batch_norm`
    (after its checks): features at dim 1, a contiguous or channels_last input, plain CPU
    tensors of one native dtype, torch's momentum rule computable, ``backend`` ``"auto"`` or
    ``"torch"``.

    ``auto`` takes it even where it picks numba for batch norm: numba's path groups the virtual
    batches into one call at the cost of a copy of the input and of the output (and of both
    gradients), which costs more than it saves (virtual batches of 4, 32x64x16x16, contiguous,
    interleaved: forward 1.0 ms this way, 1.8-2.1 ms through the grouped call; torch.nn's plain
    batch norm 0.8 ms).
    """
    if ax != 1 or backend not in ("auto", "torch"):
        return False
    # the virtual batches write slices of one output, laid out as torch's kernels write them
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(input.ndim)
    if not (input.is_contiguous() or (fmt is not None and input.is_contiguous(memory_format=fmt))):
        return False
    if (running_mean is None) != (running_var is None):
        return False
    if running_mean is not None and momentum is None and num_batches_tracked is None:
        return False
    c = input.shape[1]
    for t in (running_mean, running_var, weight, bias):
        if t is not None and t.shape != (c,):
            return False
    return _fused_update_ok((running_mean, running_var), input, weight, bias)


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    virtual_batch_size: int,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    nan_policy: NanPolicy = "skip",
    mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Ghost batch normalization (Hoffer, Hubara & Soudry 2017, arXiv:1705.08741): batch norm
    over virtual batches of ``virtual_batch_size`` samples (dim 0) of a large batch.

    .. math:: y_{i} = \\frac{x_i - \\mu_{B_k}}{\\sqrt{\\sigma^2_{B_k} + \\epsilon}}\\gamma + \\beta,
        \\quad i \\in B_k = \\{k v, \\dots, k v + v - 1\\}

    Training runs :func:`batch_norm` on each virtual batch in turn, so the running statistics
    (and ``num_batches_tracked``) are updated once per virtual batch, as Algorithm 1 of the
    paper; ``nan_policy`` acts per virtual batch (a virtual batch with NaN/Inf statistics is
    skipped, the others update). When ``N % virtual_batch_size != 0`` the last virtual batch holds the remaining
    samples (like :meth:`torch.Tensor.split`). ``virtual_batch_size == N`` is plain batch norm
    of the whole batch; a virtual batch larger than the batch is rejected (almost always a
    configuration mistake). Eval is batch norm with the running statistics.

    Shapes as :func:`batch_norm` (the batch is dim 0); ``mask`` as there.

    >>> y = ghost_batch_norm(torch.randn(64, 8), None, None, training=True, virtual_batch_size=16)
    """
    op = "ghost_batch_norm"
    if not training:
        return batch_norm(
            input, running_mean, running_var, weight, bias, False, momentum, eps,
            axis=axis, backend=backend,
        )  # fmt: skip
    check_input(input, op, 2)
    check_batch_norm_eps(eps, training, op)
    ax = feature_axis(input, axis, op)
    n = input.shape[0]
    if n == 0:  # an empty batch has no virtual batches: batch norm's empty result
        return batch_norm(
            input, running_mean, running_var, weight, bias, True, momentum, eps,
            axis=axis, num_batches_tracked=num_batches_tracked, backend=backend,
        )  # fmt: skip
    if ax == 0:
        raise ValueError(
            f"{op}: the feature axis cannot be the batch dim 0 (got axis={axis} for input of shape "
            f"{tuple(input.shape)}); virtual batches split dim 0"
        )
    if not 1 <= virtual_batch_size <= n:
        raise ValueError(
            f"{op}: virtual_batch_size must be between 1 and the batch size {n} (got "
            f"{virtual_batch_size} for input of shape {tuple(input.shape)}); lower it, raise the "
            "batch size, or use BatchNorm for batches this small"
        )
    rest = n % virtual_batch_size
    per_sample = input[0].numel() // max(input.shape[ax], 1)
    if rest and rest * per_sample <= 1 and mask is None:
        raise ValueError(
            f"{op}: the last virtual batch would hold {rest} sample with one value per channel "
            f"(batch {n}, virtual_batch_size {virtual_batch_size}); pick a virtual_batch_size "
            "that divides the batch size or drop the incomplete batch (DataLoader(drop_last=True))"
        )
    v = virtual_batch_size
    if mask is None and v * per_sample <= 1:
        raise ValueError(
            f"{op}: a virtual batch of {v} sample(s) has one value per channel (input of shape "
            f"{tuple(input.shape)}); batch statistics need more, raise virtual_batch_size"
        )
    if mask is None and _ghost_native_ok(
        input, running_mean, running_var, weight, bias, momentum, ax, num_batches_tracked, backend
    ):
        return _apply(
            _GhostBatchNormFn,
            _needs_grad(input, weight, bias),
            input, weight, bias, running_mean, running_var, v, momentum, eps,
            num_batches_tracked, nan_policy,
        )  # fmt: skip
    if mask is None and n // v > 1:
        # The full virtual batches in ONE batch-norm call: (k·v, …, C, …) → (v, …, k·C, …), so
        # each (virtual batch, feature) pair is a feature of an ordinary batch norm.
        k = n // v
        main = input[: k * v].reshape(k, v, *input.shape[1:]).movedim(0, ax)
        grouped = main.reshape(*main.shape[:ax], k * input.shape[ax], *main.shape[ax + 2 :])
        w = None if weight is None else weight.repeat(k)
        b = None if bias is None else bias.repeat(k)
        y, mean, var = backends.dispatch(
            "batch_norm_train", grouped, w, b, eps, ax, backend=backend
        )
        y = y.reshape(main.shape).movedim(ax, 0).reshape(k * v, *input.shape[1:])
        if running_mean is not None and running_var is not None:
            count = grouped.numel() // grouped.shape[ax]
            _update_running_buffers_k(
                running_mean, running_var, mean.view(k, -1), var.view(k, -1), count,
                momentum, num_batches_tracked, nan_policy,
            )  # fmt: skip
        if rest:  # updates the buffers as the full virtual batches did (one kind of update)
            tail_x = input[k * v :]
            tail, mu, var_i = backends.dispatch(
                "batch_norm_train", tail_x, weight, bias, eps, ax, backend=backend
            )
            if running_mean is not None and running_var is not None:
                update_running_buffers(
                    running_mean, running_var, mu, var_i, tail_x.numel() // input.shape[ax],
                    momentum, num_batches_tracked=num_batches_tracked, nan_policy=nan_policy,
                )  # fmt: skip
            y = torch.cat([y, keep_format(tail, tail_x)], dim=0)
        return keep_format(y, input)
    m = None if mask is None else expand_mask(mask, input, op, insert_at=ax)
    chunks = input.split(virtual_batch_size, dim=0)
    if m is not None and m.shape[0] == n:
        masks: Sequence[Tensor | None] = m.split(virtual_batch_size, dim=0)
    else:
        masks = [m] * len(chunks)
    outs = [
        batch_norm(
            chunk,
            running_mean,
            running_var,
            weight,
            bias,
            True,
            momentum,
            eps,
            axis=ax,
            num_batches_tracked=num_batches_tracked,
            nan_policy=nan_policy,
            mask=cm,
            backend=backend,
        )
        for chunk, cm in zip(chunks, masks, strict=True)
    ]
    return keep_format(torch.cat(outs, dim=0), input)


# --------------------------------------------------------------------------- fused residual norms


def _add_norm(
    op: str,
    input: Tensor,
    residual: Tensor,
    args: tuple,
    out: tuple[Tensor, Tensor] | None,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if out is None:
        y, s = backends.dispatch(op, input, residual, *args, backend=backend)
        return keep_format(y, input), keep_format(s, input)
    chosen = backends.resolve(op, input, backend)
    into = chosen.extra.get("out", {}).get(op)
    dense = all(t.is_contiguous() for t in (input, residual, *out))
    if into is not None and dense and input.dtype in (torch.float32, torch.float64):
        into(input, residual, *args, out=list(out))
    else:
        y, s = chosen.ops[op](input, residual, *args)
        out[0].copy_(y)
        out[1].copy_(s)
    return out[0], out[1]


def add_layer_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    out: tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused residual add + layer norm: returns ``(layer_norm(x + residual), x + residual)``.

    .. math:: s = x + r, \\qquad y = \\frac{s - \\mathrm{E}[s]}{\\sqrt{\\mathrm{Var}[s] + \\epsilon}} \\odot \\gamma + \\beta

    The pre-norm transformer block step (Ba et al. 2016, arXiv:1607.06450; fused as in Megatron/
    apex "fused add + norm"): the sum feeds the next residual branch, the normed value the next
    sublayer. The ``numba`` backend computes both in one pass over memory (reads x, r; writes s,
    y) instead of add then norm; gradients flow to both inputs (``∂/∂x = ∂/∂r``). The sum is
    computed in the accumulation dtype and returned in the input dtype.

    Shapes: ``input``, ``residual``: ``(*, *normalized_shape)``; ``weight``/``bias``:
    ``normalized_shape``. ``out=(normed, sum)`` writes into preallocated tensors (inference only,
    no autograd), which avoids fresh-allocation page faults for outputs ≥ 32 MiB.

    >>> x, r = torch.randn(4, 16, 64), torch.randn(4, 16, 64)
    >>> y, s = add_layer_norm(x, r, 64)
    """
    op = "add_layer_norm"
    shape = check_residual(input, residual, normalized_shape, out, op)
    check_param(weight, "weight", shape, op)
    check_param(bias, "bias", shape, op)
    return _add_norm(op, input, residual, (shape, weight, bias, eps), out, backend)


def add_rms_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    out: tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused residual add + RMS norm: returns ``(rms_norm(x + residual), x + residual)``.

    .. math:: s = x + r, \\qquad y = \\frac{s}{\\sqrt{\\frac1n\\sum_i s_i^2 + \\epsilon}} \\odot \\gamma

    RMSNorm of Zhang & Sennrich 2019 (arXiv:1910.07467) after the residual add, as in
    LLaMA-style pre-norm blocks; one pass over memory with the ``numba`` backend. ``eps=None``
    uses ``torch.finfo(input.dtype).eps`` (as :func:`torch.nn.functional.rms_norm`). Shapes and
    ``out=`` as :func:`add_layer_norm`.

    >>> x, r = torch.randn(4, 16, 64), torch.randn(4, 16, 64)
    >>> y, s = add_rms_norm(x, r, 64, torch.ones(64))
    """
    op = "add_rms_norm"
    shape = check_residual(input, residual, normalized_shape, out, op)
    check_param(weight, "weight", shape, op)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    return _add_norm(op, input, residual, (shape, weight, eps), out, backend)


def dyt(
    input: Tensor,
    alpha: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, arXiv:2503.10622), a norm-free stand-in
    for LayerNorm in transformers, element-wise over the last dim.

    .. math:: y = \\gamma \\odot \\tanh(\\alpha x) + \\beta

    ``alpha`` is a one-element tensor (learnable scalar); ``weight``/``bias`` have shape
    ``(C,)`` for an input ``(*, C)``. float16/bfloat16 compute in float32.

    >>> y = dyt(torch.randn(2, 8, 16), torch.tensor([0.5]), torch.ones(16), torch.zeros(16))
    """
    op = "dyt"
    check_input(input, op)
    if not isinstance(alpha, Tensor) or alpha.numel() != 1:
        raise ValueError(
            f"{op}: alpha must be a one-element tensor (got "
            f"{tuple(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__}); "
            "pass e.g. torch.tensor([0.5])"
        )
    c = input.shape[-1]
    check_param(weight, "weight", (c,), op)
    check_param(bias, "bias", (c,), op)
    return backends.dispatch(op, input, alpha, weight, bias, backend=backend)


_MODULATE_NORMS = ("layer", "rms", None)


def modulate(
    input: Tensor,
    shift: Tensor | None = None,
    scale: Tensor | None = None,
    gate: Tensor | None = None,
    *,
    norm: str | None = "layer",
    eps: float = 1e-6,
    backend: str = "auto",
) -> Tensor:
    """adaLN modulation, fused: normalize, scale, shift and gate in one pass (DiT: Peebles &
    Xie 2023, arXiv:2212.09748).

    .. math:: y = \\left(\\hat{x} \\odot (1 + \\mathrm{scale}) + \\mathrm{shift}\\right) \\odot \\mathrm{gate}

    ``x̂`` is the layer norm of ``input`` over its last dim without affine (``norm="layer"``,
    DiT's ``LayerNorm(elementwise_affine=False, eps=1e-6)``), its RMS norm (``"rms"``) or
    ``input`` itself (``None``: modulate an already normalized tensor). ``input`` is
    ``(N, *, C)``; ``shift``, ``scale``, ``gate`` (each optional) are ``(N, C)``, one row per
    sample, broadcast over the middle dims (tokens). DiT's ``modulate(norm(x), shift, scale)``
    is ``modulate(x, shift, scale)``; the zero-initialised ``gate`` of adaLN-Zero multiplies a
    block's output, ``x + gate·block(...)``, which is ``modulate(block_out, None, None, gate,
    norm=None)`` plus the residual.

    >>> x, c = torch.randn(4, 16, 32), torch.randn(4, 32)
    >>> y = modulate(x, shift=c, scale=c)
    """
    op = "modulate"
    check_input(input, op, 2)
    if norm not in _MODULATE_NORMS:
        raise ValueError(f"{op}: norm must be one of {_MODULATE_NORMS} (got {norm!r})")
    n, c = input.shape[0], input.shape[-1]
    for t, name in ((shift, "shift"), (scale, "scale"), (gate, "gate")):
        if t is not None and tuple(t.shape) != (n, c):
            raise ValueError(
                f"{op}: {name} must have shape (N, C) = {(n, c)} for an input of shape "
                f"{tuple(input.shape)} (got {tuple(t.shape)}); one row per sample, e.g. "
                f"{name} = linear(cond).chunk(...)"
            )
    return backends.dispatch(op, input, shift, scale, gate, norm, eps, backend=backend)
