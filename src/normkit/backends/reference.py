"""The ``reference`` backend: :mod:`normkit._reference` as a backend (always available, slow)."""

from __future__ import annotations

from torch import Tensor

from normkit import _reference as ref
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
    },
)
register(BACKEND)
