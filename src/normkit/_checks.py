"""Argument checks and small tensor helpers shared by :mod:`normkit.functional`,
:mod:`normkit.nn` and the backends.

Every check raises the exception type torch raises for the same mistake, with a message that
says what was expected, what was got, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NAN_POLICIES",
    "check_batch_norm_eps",
    "check_input",
    "check_nan_policy",
    "check_normalized_shape",
    "check_param",
    "check_positive",
    "check_residual",
    "expand_mask",
    "feature_axis",
    "keep_format",
    "memory_format_of",
]

NAN_POLICIES = ("skip", "raise", "propagate")


def check_input(x: Tensor, op: str, min_ndim: int = 1) -> None:
    """``x`` is a floating-point tensor with at least ``min_ndim`` dims."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op} expects a torch.Tensor input (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(
            f"{op} expects a floating-point input (got dtype {x.dtype}); convert it first, "
            f"e.g. x.float()"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"{op} expects an input with at least {min_ndim} dims (got shape {tuple(x.shape)})"
        )


def check_param(t: Tensor | None, name: str, shape: Sequence[int], op: str) -> None:
    """A parameter or buffer ``t`` (if given) has ``shape``."""
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{op}: {name} must have shape {tuple(shape)} to match the input (got "
            f"{tuple(t.shape)}); check num_features/normalized_shape against the input's features"
        )


def feature_axis(x: Tensor, axis: int, op: str) -> int:
    """``axis`` of ``x`` as a non-negative index (checked to be in range)."""
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"{op}: axis={axis} is out of range for an input of shape {tuple(x.shape)} "
            f"(expected -{x.ndim} <= axis < {x.ndim})"
        )
    return axis % x.ndim


def check_normalized_shape(
    x: Tensor, normalized_shape: int | Sequence[int], op: str
) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple, checked to be the trailing dims of ``x``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or tuple(x.shape[x.ndim - len(shape) :]) != shape or x.ndim < len(shape):
        raise ValueError(
            f"{op}: normalized_shape {shape} must match the trailing dims of the input (got input "
            f"of shape {tuple(x.shape)}); pass normalized_shape=x.shape[-k:] for the last k dims"
        )
    return shape


def check_residual(
    input: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    out: tuple[Tensor, Tensor] | None,
    op: str,
) -> tuple[int, ...]:
    """The arguments of a fused residual add + norm; returns ``normalized_shape`` as a tuple."""
    check_input(input, op)
    if not isinstance(residual, Tensor) or residual.shape != input.shape:
        got = tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__
        raise ValueError(
            f"{op}: residual must be a tensor of the input's shape {tuple(input.shape)} (got "
            f"{got}); broadcast it first, e.g. residual.expand_as(input)"
        )
    if residual.dtype != input.dtype or residual.device != input.device:
        raise TypeError(
            f"{op}: residual must match the input's dtype and device ({input.dtype} on "
            f"{input.device}; got {residual.dtype} on {residual.device}); convert it with "
            "residual.to(input)"
        )
    if out is not None:
        if len(out) != 2 or any(o.shape != input.shape or o.dtype != input.dtype for o in out):
            raise ValueError(
                f"{op}: out must be two tensors (normed, sum) of shape {tuple(input.shape)} and "
                f"dtype {input.dtype}"
            )
        if torch.is_grad_enabled() and (input.requires_grad or residual.requires_grad):
            raise RuntimeError(
                f"{op}: out= is for inference (no autograd); call it under torch.no_grad() or "
                "drop out="
            )
    return check_normalized_shape(input, normalized_shape, op)


def check_batch_norm_eps(eps: float, training: bool, op: str) -> None:
    """``eps`` of a batch norm: positive in training (the batch variance can be 0), non-negative
    with running statistics; torch raises ``ValueError`` for the same values."""
    if training and not eps > 0:
        raise ValueError(
            f"{op}: eps must be positive in training mode (got eps={eps}); a channel whose batch "
            "values are all equal has variance 0 and would divide by zero; use e.g. eps=1e-5"
        )
    if not eps >= 0:
        raise ValueError(
            f"{op}: eps must be non-negative (got eps={eps}); it is added to the variance "
            "before the square root; use e.g. eps=1e-5"
        )


def check_nan_policy(nan_policy: str) -> None:
    """``nan_policy`` is one of :data:`NAN_POLICIES`."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES} (got {nan_policy!r})")


def check_positive(owner: str, **sizes: int) -> None:
    """Each of ``sizes`` (``num_features=...``, ``size=...``) is a positive int.

    >>> check_positive("GroupNorm", num_channels=0)
    Traceback (most recent call last):
    ...
    ValueError: GroupNorm: num_channels must be a positive int (got 0)
    """
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int (got {value})")


def memory_format_of(x: Tensor) -> torch.memory_format | None:
    """``channels_last``/``channels_last_3d`` when ``x`` is (strictly) in that format, else None.

    >>> memory_format_of(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
    torch.channels_last
    >>> memory_format_of(torch.randn(2, 3, 4, 4)) is None
    True
    """
    if x.is_contiguous():
        return None
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def keep_format(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in ``x``'s memory format (contiguous or channels_last), copying only if needed."""
    fmt = memory_format_of(x)
    if fmt is not None and not y.is_contiguous(memory_format=fmt):
        return y.contiguous(memory_format=fmt)
    if fmt is None and x.is_contiguous() and not y.is_contiguous():
        return y.contiguous()
    return y


def expand_mask(mask: Tensor, x: Tensor, op: str, *, insert_at: int | None) -> Tensor:
    """A bool mask shaped to broadcast against ``x``.

    ``insert_at`` (batch norm): a mask with one dim less than ``x`` gets a size-1 dim there
    (the feature axis). ``None`` (layer norm): a mask equal to ``x``'s leading dims gets size-1
    trailing dims. Anything else must broadcast to ``x`` as is.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            f"{op}: mask must be a bool tensor, True where values enter the statistics (got "
            f"{got}); pass e.g. lengths[:, None] > torch.arange(L)"
        )
    m = mask.to(x.device)
    if insert_at is not None and m.ndim == x.ndim - 1:
        m = m.unsqueeze(insert_at)
    elif insert_at is None and m.ndim < x.ndim and tuple(m.shape) == tuple(x.shape[: m.ndim]):
        m = m.reshape(*m.shape, *([1] * (x.ndim - m.ndim)))
    # broadcasts to x exactly: each trailing dim 1 or x's (a loop over a few ints; the same
    # test through torch.broadcast_shapes costs ~15 µs a call)
    ok = m.ndim <= x.ndim and all(
        a == 1 or a == b for a, b in zip(reversed(m.shape), reversed(x.shape), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{op}: mask of shape {tuple(mask.shape)} does not broadcast to the input of shape "
            f"{tuple(x.shape)}; pass a mask shaped like the input without its feature axis "
            "(e.g. (N, L) for (N, C, L)) or one broadcastable to the input"
        )
    return m
