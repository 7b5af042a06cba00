"""One readable pure-torch implementation per op: the math every backend is proven against.

No tricks, no fused kernels: moments from :mod:`normkit._stats`, then ``(x − μ)/√(σ² + ε)`` and
an affine map. Computations run in the accumulation dtype (float32 for low precision, float64 for
float64) and the result is cast back to the input dtype. Autograd flows through plain torch ops,
so the gradients are the reference gradients too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from normkit._stats import accumulation_dtype, moments

__all__ = [
    "affine",
    "batch_norm",
    "dyt",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "modulate",
    "normalize",
    "rms_norm",
]


def _along(t: Tensor, ndim: int, axes: Sequence[int]) -> Tensor:
    """View a parameter whose dims are ``axes`` of an ``ndim``-d input so that it broadcasts."""
    shape = [1] * ndim
    axes = [a % ndim for a in axes]
    for a, s in zip(axes, t.shape, strict=True):
        shape[a] = s
    return t.reshape(shape)


def affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, axes: Sequence[int]) -> Tensor:
    """``y · weight + bias`` with the parameters laid along ``axes`` of ``y``."""
    if weight is not None:
        y = y * _along(weight.to(y.dtype), y.ndim, axes)
    if bias is not None:
        y = y + _along(bias.to(y.dtype), y.ndim, axes)
    return y


def normalize(
    x: Tensor, dims: Sequence[int], eps: float, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x − μ)/√(σ² + ε)`` with μ, σ² the biased moments over ``dims``.

    Returns ``(y, mean, var)`` in the accumulation dtype, mean/var keeping the reduced dims.
    ``mask`` (bool, broadcastable to ``x``): only ``True`` positions enter μ and σ²; every
    position is normalized.
    """
    mean, var = moments(x, dims, keepdim=True, mask=mask)
    y = (x.to(mean.dtype) - mean) * torch.rsqrt(var + eps)
    return y, mean, var


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    axis: int = 1,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Batch norm (Ioffe & Szegedy 2015) with features on ``axis``, statistics over all other axes.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\gamma + \\beta

    Training uses the batch moments (biased variance) and returns them as ``(y, mean, var)``
    with shape ``(C,)``; eval uses ``running_mean``/``running_var`` and returns ``(y, None, None)``.
    ``mask`` (training only): the statistics use the ``True`` positions only.
    """
    axis %= x.ndim
    dims = [d for d in range(x.ndim) if d != axis]
    if training:
        y, mean, var = normalize(x, dims, eps, mask=mask)
        out = affine(y, weight, bias, [axis]).to(x.dtype)
        return out, mean.reshape(-1), var.reshape(-1)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm in eval mode needs running_mean and running_var")
    acc = accumulation_dtype(x.dtype)
    mean = _along(running_mean.to(acc), x.ndim, [axis])
    var = _along(running_var.to(acc), x.ndim, [axis])
    y = (x.to(acc) - mean) * torch.rsqrt(var + eps)
    return affine(y, weight, bias, [axis]).to(x.dtype), None, None


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Layer norm (Ba, Kiros & Hinton 2016) over the trailing ``len(normalized_shape)`` dims.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\odot \\gamma + \\beta

    ``mask``: the statistics use the ``True`` positions only.
    """
    k = len(normalized_shape)
    dims = list(range(x.ndim - k, x.ndim))
    y, _, _ = normalize(x, dims, eps, mask=mask)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def rms_norm(
    x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float
) -> Tensor:
    """RMS norm (Zhang & Sennrich 2019) over the trailing ``len(normalized_shape)`` dims.

    .. math:: y = \\frac{x}{\\sqrt{\\mathrm{E}[x^2] + \\epsilon}} \\odot \\gamma
    """
    k = len(normalized_shape)
    dims = list(range(x.ndim - k, x.ndim))
    xa = x.to(accumulation_dtype(x.dtype))
    y = xa * torch.rsqrt(xa.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group norm (Wu & He 2018): channels split into ``num_groups`` groups, statistics per
    sample and group over the group's channels and all positions; per-channel affine.
    """
    n, c = x.shape[0], x.shape[1]
    g = x.reshape(n, num_groups, c // num_groups, x.shape[2:].numel())
    y, _, _ = normalize(g, [2, 3], eps)
    return affine(y.reshape(x.shape), weight, bias, [1]).to(x.dtype)


def instance_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Instance norm (Ulyanov et al. 2016): statistics per sample and channel over positions.

    This is also the channel normalization of Dai & Heckel 2019.
    """
    y, _, _ = normalize(x, list(range(2, x.ndim)), eps)
    return affine(y, weight, bias, [1]).to(x.dtype)


def dyt(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Dynamic Tanh (Zhu et al. 2025, arXiv:2503.10622) over the last dim.

    .. math:: y = \\gamma \\odot \\tanh(\\alpha x) + \\beta
    """
    acc = accumulation_dtype(x.dtype)
    y = torch.tanh(alpha.to(acc) * x.to(acc))
    return affine(y, weight, bias, [-1]).to(x.dtype)


def modulate(
    x: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    gate: Tensor | None,
    norm: str | None,
    eps: float,
) -> Tensor:
    """adaLN modulation (Peebles & Xie 2023, DiT): ``(x̂ ⊙ (1 + scale) + shift) ⊙ gate``.

    ``x`` is ``(N, *, C)``; ``shift``/``scale``/``gate`` are ``(N, C)``, one row per sample,
    broadcast over the middle dims. ``x̂`` is the layer norm (``norm="layer"``), the RMS norm
    (``"rms"``) over ``C`` without affine, or ``x`` itself (``None``).
    """
    acc = accumulation_dtype(x.dtype)
    xa = x.to(acc)
    if norm == "layer":
        xa, _, _ = normalize(xa, [-1], eps)
    elif norm == "rms":
        xa = xa * torch.rsqrt(xa.square().mean(dim=-1, keepdim=True) + eps)

    def per_sample(t: Tensor) -> Tensor:
        return t.to(acc).reshape(t.shape[0], *([1] * (x.ndim - 2)), t.shape[-1])

    if scale is not None:
        xa = xa * (1 + per_sample(scale))
    if shift is not None:
        xa = xa + per_sample(shift)
    if gate is not None:
        xa = xa * per_sample(gate)
    return xa.to(x.dtype)


def local_response_norm(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """Local response normalization across dim 1 (Krizhevsky et al. 2012), in the accumulation
    dtype: ``x / (k + alpha/size · Σ window x²)^beta`` over channels ``c − ⌊size/2⌋ …
    c + ⌊(size−1)/2⌋`` (zeros beyond the edges), as :func:`torch.nn.functional.local_response_norm`."""
    xa = x.to(accumulation_dtype(x.dtype))
    squares = torch.nn.functional.pad(xa.square().movedim(1, -1), (size // 2, (size - 1) // 2))
    window = squares.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    return (xa / (window * (alpha / size) + k).pow(beta)).to(x.dtype)
