"""What a recorded step of :func:`~normkit.diagnostics.watch` measures, as torch reductions.

Each function returns new tensors left on the input's device (the recorder reads them all to
the host later, see :mod:`~normkit.diagnostics._store`) and the facts needed to turn them into
metrics; later in-place ops on the measured tensor cannot change them.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normkit._optional import installed
from normkit._stats import accumulation_dtype
from normkit.diagnostics._data import LayerInfo
from normkit.diagnostics._modules import SAT_HIGH

__all__ = ["first_tensor", "kernels", "norm_stats", "output_stats", "tensor_norm", "warmup"]

_FLOATS = (torch.float32, torch.float64)


@cache
def kernels() -> Any:
    """:mod:`normkit.diagnostics._kernels` (serial Numba kernels), or None without numba."""
    if not installed("numba"):
        return None
    from normkit.diagnostics import _kernels

    return _kernels


def first_tensor(output: Any) -> Tensor | None:
    """``output`` if a tensor, else the first tensor of a tuple or list (None if none)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


def tensor_norm(t: Tensor, dim: int | None = None) -> Tensor:
    """The L2 norm of ``t`` (along ``dim``; of its stored values when sparse), accumulated in
    float32 or float64."""
    if t.is_sparse:
        t = t.coalesce().values()
    acc = None if t.dtype in _FLOATS else accumulation_dtype(t.dtype)
    return torch.linalg.vector_norm(t, dim=dim, dtype=acc)


def output_stats(x: Tensor, info: LayerInfo) -> tuple[Any, list[Tensor]]:
    """Of a layer's output ``x`` (detached): Σx, ‖x‖ (the std is combined in float64 when read
    as √(‖x‖²/n − mean²): exact enough to monitor scale unless |mean| > 1000·std), min and
    max, then for ReLU layers each unit's largest value (a unit, a channel or each value of a
    vector, is dead if ≤ 0 for every sample and position), for saturating ones the count of
    saturated values."""
    x = x if x.dtype in _FLOATS else x.float()
    act = info.activation
    lo, hi = torch.aminmax(x)
    vals = [x.sum(), torch.linalg.vector_norm(x), lo, hi]
    if act == "relu":
        vals.append(x.amax(dim=[d for d in range(x.ndim) if d != 1]) if x.ndim >= 2 else x > 0)
    elif act is not None:
        centre, half = (0.5, SAT_HIGH - 0.5) if act == "sigmoid" else (0.0, SAT_HIGH)
        vals.append(torch.count_nonzero(x.sub(centre).abs_().gt_(half)))
    units = x.shape[1] if x.ndim >= 2 else x.numel()
    return (x.numel(), units, act, info.norm is not None), vals


def _channel_stats(x: Tensor) -> list[Tensor]:
    """Per channel (dim 1) the mean and Σ(x − mean)², in two passes (torch.var_mean is ~20x
    slower on CPU); a contiguous input is reduced as (N, C, rest), which torch does faster than
    over dims (0, 2, 3, ...), by a Numba kernel on CPU (two reads instead of six passes: 2-4x
    faster, float64 sums)."""
    if x.is_contiguous():
        x = x.reshape(x.shape[0], x.shape[1], -1)
        k = kernels() if x.device.type == "cpu" and x.dtype in _FLOATS else None
        if k is not None:
            out = np.empty((2, x.shape[1]))
            k.channel_moments(x.numpy(), out)
            return [torch.from_numpy(out[0]), torch.from_numpy(out[1])]
    dims = [d for d in range(x.ndim) if d != 1]
    mean = x.mean(dims, keepdim=True)
    dev = x - mean
    return [mean.reshape(-1), dev.mul_(dev).sum(dims)]


def norm_stats(module: nn.Module, x: Tensor) -> tuple[tuple[int, int, bool, float], list[Tensor]]:
    """Of a normalization layer about to normalize ``x`` (detached): its γ and, for a batch
    norm in training mode, its running statistics (before this step updates them; one copy)
    and the batch's per-channel mean and Σ(x − mean)², else ‖x‖; with (values, channels of the
    batch statistics or 0, whether γ came first, ε)."""
    w = getattr(module, "weight", None)
    ws = [w.detach().reshape(-1)] if isinstance(w, Tensor) and w.numel() else []
    rm, rv = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if (
        module.training
        and x.ndim >= 2
        and isinstance(rm, Tensor)
        and isinstance(rv, Tensor)
        and rm.numel() == rv.numel() == x.shape[1]
    ):
        vals, channels = [torch.cat([*ws, rm, rv]), *_channel_stats(x)], x.shape[1]
    else:
        vals, channels = [*(w.clone() for w in ws), torch.linalg.vector_norm(x)], 0
    eps = float(getattr(module, "eps", 1e-5))
    return (x.numel(), channels, bool(ws), eps), vals


def warmup(bn: nn.Module) -> int:
    """Updates after which a batch norm's running statistics forgot their initial values to
    5% (3/momentum for an exponential average; Keras-convention momenta count as 1 − m)."""
    m = getattr(bn, "momentum", None)
    if not isinstance(m, float) or not 0 < m < 1:
        return 0  # (a cumulative average: no start-up bias)
    conv = getattr(bn, "momentum_convention", None) or getattr(bn, "convention", None)
    return math.ceil(3 / (1 - m if conv == "keras" else m))
