"""The one place where a numba kernel becomes a torch op: custom op, fake, autograd, eager twin.

Each op is a ``torch.library.custom_op`` (namespace ``normkit``) with a fake implementation and a
registered autograd formula, so models using it run under ``torch.compile`` (the op is opaque to
Inductor, no graph break) and ``torch.export``. Eager calls take an equivalent
``torch.autograd.Function`` that calls the kernels directly, skipping the dispatcher round trip
and the one-time ``torch._dynamo`` import (~1–4 s) that a custom op's first eager call triggers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["NumbaOp", "define", "stats_norm_grad", "traced"]


def traced(x: Tensor) -> bool:
    """Whether torch.compile/torch.export (or a dispatch mode) is tracing this call.

    The dispatch-mode test has no public equivalent in torch 2.13: under ``make_fx`` with real
    tensors or a user's ``TorchDispatchMode`` (FlopCounterMode, ...) the input is a plain
    ``Tensor`` and ``torch.compiler.is_compiling()``/``is_exporting()`` are False, yet an eager
    kernel call would be invisible to the mode (tests/test_compile.py pins this).
    """
    if torch.compiler.is_compiling() or type(x) not in (Tensor, torch.nn.Parameter):
        return True
    return _get_current_dispatch_mode() is not None


@dataclass(frozen=True)
class NumbaOp:
    """A kernel-backed op: ``op`` (the custom op, for traced calls), ``backward`` (its backward
    custom op, or ``None`` when the gradient is plain torch), ``eager`` (the autograd.Function
    that eager calls take) and ``kernel`` (the forward itself, for eager calls with autograd off:
    no graph to record, so no Function)."""

    op: Any
    backward: Any
    eager: Any
    kernel: Callable[..., Any]

    def __call__(self, x: Tensor, *args: Any) -> Any:
        if traced(x):
            return self.op(x, *args)
        return self.eager.apply(x, *args) if torch.is_grad_enabled() else self.kernel(x, *args)


def _eager_function(
    name: str, forward: Callable[..., Any], setup: Callable[..., None], grad: Callable[..., Any]
) -> Any:
    """A ``torch.autograd.Function`` running ``forward`` and ``grad`` (with its direct backward)."""

    def fwd(ctx: Any, *inputs: Any) -> Any:
        ctx.set_materialize_grads(False)
        out = forward(*inputs)
        setup(ctx, inputs, out)
        return out

    def bwd(ctx: Any, *grads: Any) -> Any:
        return grad(ctx, *grads)

    body = {"forward": staticmethod(fwd), "backward": staticmethod(bwd), "__doc__": forward.__doc__}
    return type(name, (torch.autograd.Function,), body)


def _unmaterialized(setup: Callable[..., None]) -> Callable[..., None]:
    """``setup`` with unused outputs' gradients left ``None`` (autograd would otherwise make a
    zero tensor for each statistic output of a traced call, as the eager Function does not)."""

    def wrapped(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.set_materialize_grads(False)
        setup(ctx, inputs, output)

    return wrapped


def define(
    name: str,
    forward: Callable[..., Any],
    fake: Callable[..., Any],
    setup: Callable[..., None],
    grad: Callable[..., Any],
    *,
    backward: Callable[..., Any] | None = None,
    backward_fake: Callable[..., Any] | None = None,
    backward_of: NumbaOp | None = None,
) -> NumbaOp:
    """Register ``normkit::<name>`` (and ``normkit::<name>_backward`` when ``backward`` is given).

    ``forward``/``backward`` are the kernel entry points (fully annotated: the op schemas are
    inferred from them), ``fake``/``backward_fake`` their shape-only twins, ``setup`` the
    autograd ``setup_context(ctx, inputs, output)``, and ``grad(ctx, *grads, backward=...)`` the
    gradient formula, called with the backward custom op when traced and with ``backward``
    itself when eager. ``backward_of``: reuse that op's backward custom op (``backward`` is then
    its kernel entry point) instead of registering another one.
    """
    op = torch.library.custom_op(f"normkit::{name}", forward, mutates_args=())
    op.register_fake(fake)
    backward_op = None
    if backward_of is not None:
        backward_op = backward_of.backward
    elif backward is not None:
        if backward_fake is None:
            raise TypeError(f"define({name!r}): a backward op needs backward_fake (its shapes)")
        backward_op = torch.library.custom_op(
            f"normkit::{name}_backward", backward, mutates_args=()
        )
        backward_op.register_fake(backward_fake)
    op.register_autograd(
        functools.partial(grad, backward=backward_op), setup_context=_unmaterialized(setup)
    )
    eager = _eager_function(name, forward, setup, functools.partial(grad, backward=backward))
    return NumbaOp(op, backward_op, eager, forward)


def stats_norm_grad(ctx: Any, dy: Tensor | None, *_: Any, backward: Any) -> tuple:
    """Gradients of a norm whose op saved ``(x, weight, mean, rstd)`` and one layout argument
    (``ctx.layout``: the feature axis of batch norm, the group count of group norm)."""
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None
    dx, dw, db = backward(dy, x, weight, mean, rstd, ctx.layout)
    gw = dw.to(weight.dtype) if weight is not None else None
    gb = db.to(weight.dtype if weight is not None else db.dtype) if ctx.has_bias else None
    return dx, gw, gb, None, None
