"""The ``reference`` backend: :mod:`normkit._reference` as a backend (always available, slow)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from normkit import _reference as ref
from normkit._casting import layer_norm_cast, rms_norm_cast
from normkit._stats import accumulation_dtype
from normkit.backends.registry import Backend, register


def _batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, var = ref.batch_norm(x, None, None, weight, bias, True, eps, axis)
    assert mean is not None and var is not None
    return y, mean.detach(), var.detach()


def _batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    return ref.batch_norm(x, running_mean, running_var, weight, bias, False, eps, axis)[0]


def _add_norm(x: Tensor, residual: Tensor) -> Tensor:
    acc = accumulation_dtype(x.dtype)
    return x.to(acc) + residual.to(acc)


def _add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    s = _add_norm(x, residual)
    return ref.layer_norm(s, normalized_shape, weight, bias, eps).to(x.dtype), s.to(x.dtype)


def _add_rms_norm(
    x: Tensor, residual: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    s = _add_norm(x, residual)
    return ref.rms_norm(s, normalized_shape, weight, eps).to(x.dtype), s.to(x.dtype)


BACKEND = Backend(
    name="reference",
    priority=0,
    description="readable pure-torch math in the accumulation dtype; the oracle",
    ops={
        "batch_norm_train": _batch_norm_train,
        "batch_norm_eval": _batch_norm_eval,
        "layer_norm": ref.layer_norm,
        "rms_norm": ref.rms_norm,
        "group_norm": ref.group_norm,
        "instance_norm": ref.instance_norm,
        "local_response_norm": ref.local_response_norm,
        "add_layer_norm": _add_layer_norm,
        "add_rms_norm": _add_rms_norm,
        "rms_norm_cast": rms_norm_cast,
        "layer_norm_cast": layer_norm_cast,
        "dyt": ref.dyt,
        "modulate": ref.modulate,
    },
)
register(BACKEND)
