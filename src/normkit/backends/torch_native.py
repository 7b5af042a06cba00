"""The ``torch`` backend: PyTorch's native fused ops, with normkit's dtype policy on top.

float16/bfloat16 inputs are computed in float32 and cast back (statistics never accumulate in
half precision; see pytorch#115500, pytorch#189581). Batch statistics for the running averages
come out of the same native call: ``F.batch_norm`` is given scratch buffers and ``momentum=1``,
so they receive exactly the batch mean and unbiased variance, with no extra pass over the data.

Inputs already in their accumulation dtype (float32/float64, parameters alike) call the native
``torch.*_norm`` entry points directly: the same ATen ops as :mod:`torch.nn.functional`, without
its Python wrapper (its input checks are done by :mod:`normkit.functional`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normkit import _reference
from normkit._casting import layer_norm_cast, rms_norm_cast
from normkit._stats import accumulation_dtype
from normkit.backends.registry import Backend, register


def _cudnn(x: Tensor) -> bool:
    """The ``cudnn_enabled`` flag torch.nn.functional passes (read only where it matters)."""
    return x.is_cuda and torch.backends.cudnn.enabled


def _with_params(
    weight: Tensor | None, bias: Tensor | None, acc: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    return w, b


def _native_dtype(x: Tensor, *others: Tensor | None) -> bool:
    """Whether ``x`` is in its accumulation dtype and every other tensor matches it (the
    native op then runs as is: no casts)."""
    dt = x.dtype
    if dt not in (torch.float32, torch.float64):
        return False
    return all(t is None or t.dtype == dt for t in others)


def _batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int
) -> tuple[Tensor, Tensor, Tensor]:
    axis %= x.ndim
    xm = x if axis == 1 else x.movedim(axis, 1)
    acc = accumulation_dtype(x.dtype)
    c = xm.shape[1]
    n = xm.numel() // max(c, 1)
    w, b = _with_params(weight, bias, acc)
    if torch.compiler.is_exporting():
        # ONNX's BatchNormalization has no batch-statistics inference mode (onnxruntime would
        # normalize with the scratch buffers): export the moments and the affine map as ops,
        # in float64 so the graph's long reductions stay within float32's tolerance of eager
        dims = [d for d in range(xm.ndim) if d != 1]
        shape = [1, c] + [1] * (xm.ndim - 2)
        xa = xm.to(torch.float64)
        mean = xa.mean(dim=dims)
        centred = xa - mean.view(shape)
        biased = centred.square().mean(dim=dims)
        y = centred * torch.rsqrt(biased.view(shape) + eps)
        if w is not None:
            y = y * w.view(shape)
        if b is not None:
            y = y + b.view(shape)
        y = y.to(x.dtype)
        return (y if axis == 1 else y.movedim(1, axis)), mean.to(acc), biased.to(acc)
    mean = torch.zeros(c, dtype=acc, device=x.device)
    var = torch.ones(c, dtype=acc, device=x.device)
    y = F.batch_norm(xm.to(acc), mean, var, w, b, True, 1.0, eps)
    y = y.to(x.dtype)
    if axis != 1:
        y = y.movedim(1, axis)
    return y, mean, var * ((n - 1) / n) if n > 1 else var


def _batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    axis %= x.ndim
    if axis == 1 and _native_dtype(x, running_mean, running_var, weight, bias):
        return torch.batch_norm(
            x, weight, bias, running_mean, running_var, False, 0.0, eps, _cudnn(x)
        )
    xm = x if axis == 1 else x.movedim(axis, 1)
    acc = accumulation_dtype(x.dtype)
    w, b = _with_params(weight, bias, acc)
    y = F.batch_norm(xm.to(acc), running_mean.to(acc), running_var.to(acc), w, b, False, 0.0, eps)
    y = y.to(x.dtype)
    return y if axis == 1 else y.movedim(1, axis)


def _layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    if _native_dtype(x, weight, bias):
        return torch.layer_norm(x, normalized_shape, weight, bias, eps, _cudnn(x))
    acc = accumulation_dtype(x.dtype)
    w, b = _with_params(weight, bias, acc)
    return F.layer_norm(x.to(acc), tuple(normalized_shape), w, b, eps).to(x.dtype)


def _rms_norm(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> Tensor:
    if _native_dtype(x, weight):
        return torch.rms_norm(x, normalized_shape, weight, eps)
    acc = accumulation_dtype(x.dtype)
    w, _ = _with_params(weight, None, acc)
    return F.rms_norm(x.to(acc), tuple(normalized_shape), w, eps).to(x.dtype)


def _group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    if _native_dtype(x, weight, bias):
        return torch.group_norm(x, num_groups, weight, bias, eps, _cudnn(x))
    acc = accumulation_dtype(x.dtype)
    w, b = _with_params(weight, bias, acc)
    return F.group_norm(x.to(acc), num_groups, w, b, eps).to(x.dtype)


def _instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if _native_dtype(x, weight, bias):
        return torch.instance_norm(x, weight, bias, None, None, True, 0.0, eps, _cudnn(x))
    acc = accumulation_dtype(x.dtype)
    w, b = _with_params(weight, bias, acc)
    return F.instance_norm(x.to(acc), None, None, w, b, True, 0.0, eps).to(x.dtype)


def _local_response_norm(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return F.local_response_norm(x.to(accumulation_dtype(x.dtype)), size, alpha, beta, k).to(
        x.dtype
    )


def _add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    # Unfused: the sum is materialised, then read again by the norm.
    s = x + residual
    return _layer_norm(s, normalized_shape, weight, bias, eps), s


def _add_rms_norm(
    x: Tensor, residual: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    s = x + residual
    return _rms_norm(s, normalized_shape, weight, eps), s


def _modulate(
    x: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    gate: Tensor | None,
    norm: str | None,
    eps: float,
) -> Tensor:
    acc = accumulation_dtype(x.dtype)
    xa = x.to(acc)
    if norm == "layer":
        xa = F.layer_norm(xa, xa.shape[-1:], None, None, eps)
    elif norm == "rms":
        xa = F.rms_norm(xa, xa.shape[-1:], None, eps)
    view = (x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1])
    if scale is not None:
        xa = xa * (1 + scale.to(acc).reshape(view))
    if shift is not None:
        xa = xa + shift.to(acc).reshape(view)
    if gate is not None:
        xa = xa * gate.to(acc).reshape(view)
    return xa.to(x.dtype)


BACKEND = Backend(
    name="torch",
    priority=10,
    description="PyTorch native ops (low precision computed in float32)",
    ops={
        "batch_norm_train": _batch_norm_train,
        "batch_norm_eval": _batch_norm_eval,
        "layer_norm": _layer_norm,
        "rms_norm": _rms_norm,
        "group_norm": _group_norm,
        "instance_norm": _instance_norm,
        "local_response_norm": _local_response_norm,
        "add_layer_norm": _add_layer_norm,
        "add_rms_norm": _add_rms_norm,
        "rms_norm_cast": rms_norm_cast,
        "layer_norm_cast": layer_norm_cast,
        # compositions of native ops (torch has no fused DyT or adaLN modulate)
        "dyt": _reference.dyt,
        "modulate": _modulate,
    },
)
register(BACKEND)
