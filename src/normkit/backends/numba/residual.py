"""Residual add fused with layer norm or RMS norm: ``s = x + residual``, ``y = norm(s)``, both
returned, in one pass over memory (the ``normkit::numba_layer_norm`` op with a residual)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from normkit.backends.numba._tensors import numel
from normkit.backends.numba.layer_norm import LAYER_NORM, flat, forward

__all__ = ["add_layer_norm", "add_layer_norm_out", "add_rms_norm", "add_rms_norm_out"]


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    n = numel(normalized_shape)
    y, s, _, _ = LAYER_NORM(x, residual, flat(weight), flat(bias), n, float(eps), True)
    return y, s


def add_rms_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    n = numel(normalized_shape)
    y, s, _, _ = LAYER_NORM(x, residual, flat(weight), None, n, float(eps), False)
    return y, s


def add_layer_norm_out(x, residual, normalized_shape, weight, bias, eps, *, out):
    n = numel(normalized_shape)
    with torch.no_grad():
        return forward(x, residual, weight, bias, n, float(eps), True, out=out)[:2]


def add_rms_norm_out(x, residual, normalized_shape, weight, eps, *, out):
    n = numel(normalized_shape)
    with torch.no_grad():
        return forward(x, residual, weight, None, n, float(eps), False, out=out)[:2]
