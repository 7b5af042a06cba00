"""Conditional norms: the affine map comes from a conditioning input (diffusion, GANs, style).

Outputs keep the input's dtype (a float32 conditioning path with bfloat16 activations gives
bfloat16).

``AdaLayerNorm``/``AdaLNZero`` (DiT), ``AdaGroupNorm`` (diffusers' UNet blocks),
``ConditionalBatchNorm2d`` (class-conditional γ/β), ``FiLM`` and ``AdaIN``. The adaLN layers run
:func:`normkit.functional.modulate`, which the numba backend fuses (normalize, scale, shift in
one pass forward and backward).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._stats import bessel_correction, moments
from normkit.nn._base import adds_options
from normkit.nn.batchnorm import BatchNorm2d

__all__ = [
    "AdaGroupNorm",
    "AdaIN",
    "AdaLNZero",
    "AdaLayerNorm",
    "ConditionalBatchNorm2d",
    "FiLM",
]


def _check_cond(name: str, cond: Tensor, x: Tensor, dim: int) -> None:
    if cond.ndim != 2 or cond.shape[0] != x.shape[0] or cond.shape[1] != dim:
        raise ValueError(
            f"{name} expects a conditioning tensor of shape (N, {dim}) with N = {x.shape[0]} "
            f"samples (got {tuple(cond.shape)}); pass one embedding row per sample"
        )


class _AdaLN(nn.Module):
    """The adaLN layers' shared part: ``linear(SiLU(cond))`` split into ``chunks`` modulation
    vectors of ``embedding_dim`` values each, the first two of which shift and scale the layer
    norm of the input (:func:`normkit.functional.modulate`)."""

    chunks: int

    def __init__(
        self,
        embedding_dim: int,
        cond_dim: int | None = None,
        eps: float = 1e-6,
        *,
        zero_init: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.cond_dim = cond_dim or embedding_dim
        self.eps = eps
        self.backend = backend
        self.silu = nn.SiLU()
        self.linear = nn.Linear(
            self.cond_dim, self.chunks * embedding_dim, device=device, dtype=dtype
        )
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def _modulations(self, input: Tensor, cond: Tensor) -> tuple[Tensor, ...]:
        """The ``chunks`` vectors, each ``(N, embedding_dim)``, for ``input`` and ``cond``."""
        _check_cond(type(self).__name__, cond, input, self.cond_dim)
        return self.linear(self.silu(cond)).chunk(self.chunks, dim=1)

    def extra_repr(self) -> str:
        return f"{self.embedding_dim}, cond_dim={self.cond_dim}, eps={self.eps}"


class AdaLayerNorm(_AdaLN):
    """Adaptive layer norm, "adaLN" (Peebles & Xie 2023, DiT, arXiv:2212.09748).

    .. math:: (\\mathrm{scale}, \\mathrm{shift}) = W\\,\\mathrm{SiLU}(c) + b,\\quad
              y = \\mathrm{LN}(x) \\odot (1 + \\mathrm{scale}) + \\mathrm{shift}

    LayerNorm without affine over the last dim (``embedding_dim``), ``eps=1e-6`` as DiT; the
    conditioning ``c`` is ``(N, cond_dim)``, the input ``(N, *, embedding_dim)``. Parameters and
    the (scale, shift) order are those of diffusers' ``AdaLayerNormContinuous(embedding_dim,
    cond_dim, elementwise_affine=False, eps=1e-6)``, whose state_dict loads as is.
    ``zero_init=True`` starts as a plain LayerNorm (the linear map is zero).

    >>> ada = AdaLayerNorm(64, cond_dim=32)
    >>> y = ada(torch.randn(4, 10, 64), torch.randn(4, 32))
    """

    chunks = 2

    def forward(self, input: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self._modulations(input, cond)
        return NF.modulate(input, shift, scale, eps=self.eps, backend=self.backend)


class AdaLNZero(_AdaLN):
    """adaLN-Zero (Peebles & Xie 2023, DiT, arXiv:2212.09748): a DiT block's conditioning.

    .. math:: (s_1, c_1, g_1, s_2, c_2, g_2) = W\\,\\mathrm{SiLU}(c) + b,\\quad
              y = \\mathrm{LN}(x) \\odot (1 + c_1) + s_1

    Returns ``(y, gate_msa, shift_mlp, scale_mlp, gate_mlp)``: ``y`` feeds attention, whose
    output enters the residual as ``x + gate_msa[:, None] · attn(y)``; the MLP branch uses the
    other three the same way. W and b start at zero, so every gate is 0 and the block starts as
    the identity (the "Zero"; ``zero_init=False`` keeps nn.Linear's initialization). Parameters,
    chunk order and outputs are those of diffusers' ``AdaLayerNormZero(embedding_dim)``
    (``cond_dim = embedding_dim`` there).

    >>> ada = AdaLNZero(64)
    >>> y, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada(torch.randn(4, 10, 64), torch.randn(4, 64))
    """

    chunks = 6

    @adds_options(_AdaLN, zero_init=True)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def forward(self, input: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self._modulations(input, cond)
        y = NF.modulate(input, shift, scale, eps=self.eps, backend=self.backend)
        return y, gate, shift_mlp, scale_mlp, gate_mlp


class AdaGroupNorm(nn.Module):
    """Group norm with scale and shift from an embedding (diffusers' ``AdaGroupNorm``, the
    UNet's timestep-conditioned norm; Dhariwal & Nichol 2021's AdaGN, arXiv:2105.05233).

    .. math:: (\\mathrm{scale}, \\mathrm{shift}) = W\\,\\phi(e) + b,\\quad
              y = \\mathrm{GN}(x) \\odot (1 + \\mathrm{scale}) + \\mathrm{shift}

    ``φ`` is ``act`` (``None``, ``"silu"``, ``"gelu"``, ...) applied to the embedding ``e``
    ``(N, embedding_dim)``; scale and shift are per sample and channel. Same parameters as
    diffusers' ``AdaGroupNorm(embedding_dim, out_dim, num_groups, act_fn, eps)``.

    >>> gn = AdaGroupNorm(32, 64, num_groups=8, act="silu")
    >>> y = gn(torch.randn(2, 64, 8, 8), torch.randn(2, 32))
    """

    def __init__(
        self,
        embedding_dim: int,
        out_dim: int,
        num_groups: int,
        act: str | None = None,
        eps: float = 1e-5,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if out_dim % num_groups:
            raise ValueError(
                f"AdaGroupNorm: out_dim ({out_dim}) must be divisible by num_groups ({num_groups})"
            )
        self.embedding_dim, self.out_dim, self.num_groups = embedding_dim, out_dim, num_groups
        self.eps = eps
        self.backend = backend
        self.act_name = act
        self.act = _activation(act)
        self.linear = nn.Linear(embedding_dim, 2 * out_dim, device=device, dtype=dtype)

    def forward(self, input: Tensor, emb: Tensor) -> Tensor:
        _check_cond("AdaGroupNorm", emb, input, self.embedding_dim)
        scale, shift = self.linear(self.act(emb)).chunk(2, dim=1)
        y = NF.group_norm(input, self.num_groups, None, None, self.eps, backend=self.backend)
        view = (*scale.shape, *([1] * (input.ndim - 2)))
        return (y * (1 + scale.reshape(view)) + shift.reshape(view)).to(input.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.embedding_dim}, {self.out_dim}, num_groups={self.num_groups}, "
            f"act={self.act_name!r}, eps={self.eps}"
        )


def _activation(name: str | None) -> nn.Module:
    table: dict[str | None, type[nn.Module]] = {
        None: nn.Identity,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "gelu": nn.GELU,
        "relu": nn.ReLU,
        "mish": nn.Mish,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {list(table)}")
    return table[name]()


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional batch norm (de Vries et al. 2017, arXiv:1707.00683; the form of
    Miyato & Koyama 2018 and BigGAN): one (γ, β) row per class.

    .. math:: y = \\gamma_{c} \\odot \\mathrm{BN}(x) + \\beta_{c}

    ``BN`` is :class:`~normkit.nn.BatchNorm2d` without affine (running statistics shared by all
    classes); γ starts at 1 and β at 0 for every class. ``labels`` are class indices ``(N,)``.

    >>> cbn = ConditionalBatchNorm2d(16, num_classes=10)
    >>> y = cbn(torch.randn(8, 16, 4, 4), torch.randint(0, 10, (8,)))
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes
        self.bn = BatchNorm2d(
            num_features, eps, momentum, affine=False, device=device, dtype=dtype, backend=backend
        )
        self.embed = nn.Embedding(num_classes, 2 * num_features, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ = 1, β = 0 for every class; running statistics reset."""
        self.bn.reset_running_stats()
        with torch.no_grad():
            self.embed.weight[:, : self.num_features].fill_(1.0)
            self.embed.weight[:, self.num_features :].zero_()

    def forward(self, input: Tensor, labels: Tensor) -> Tensor:
        if labels.ndim != 1 or labels.shape[0] != input.shape[0] or labels.is_floating_point():
            raise ValueError(
                f"ConditionalBatchNorm2d expects integer class labels of shape (N,) = "
                f"({input.shape[0]},) (got {labels.dtype} of shape {tuple(labels.shape)})"
            )
        gamma, beta = self.embed(labels).chunk(2, dim=1)
        y = self.bn(input)
        return (gamma[:, :, None, None] * y + beta[:, :, None, None]).to(input.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_classes={self.num_classes}"


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018, arXiv:1709.07871).

    .. math:: (\\gamma, \\beta) = W c + b,\\quad y = \\gamma \\odot x + \\beta

    γ, β per sample and feature, laid along ``axis`` of the input (1: channels of a feature
    map ``(N, C, *)``; -1: tokens ``(N, *, C)``). The generator starts at the identity
    (W = 0, γ's bias = 1, β's bias = 0).

    >>> film = FiLM(16, cond_dim=8)
    >>> y = film(torch.randn(4, 16, 5, 5), torch.randn(4, 8))
    """

    def __init__(
        self,
        num_features: int,
        cond_dim: int,
        axis: int = 1,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.cond_dim, self.axis = num_features, cond_dim, axis
        self.linear = nn.Linear(cond_dim, 2 * num_features, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity map: W = 0, γ bias 1, β bias 0."""
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias[: self.num_features].fill_(1.0)
            self.linear.bias[self.num_features :].zero_()

    def forward(self, input: Tensor, cond: Tensor) -> Tensor:
        _check_cond("FiLM", cond, input, self.cond_dim)
        axis = self.axis % input.ndim
        if axis == 0 or input.shape[axis] != self.num_features:
            raise ValueError(
                f"FiLM({self.num_features}, axis={self.axis}) expects {self.num_features} "
                f"features on a non-batch axis {self.axis} (got shape {tuple(input.shape)})"
            )
        gamma, beta = self.linear(cond).chunk(2, dim=1)
        view = [1] * input.ndim
        view[0], view[axis] = input.shape[0], self.num_features
        return (gamma.reshape(view) * input + beta.reshape(view)).to(input.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, cond_dim={self.cond_dim}, axis={self.axis}"


class AdaIN(nn.Module):
    """Adaptive instance normalization (Huang & Belongie 2017, arXiv:1703.06868): the content's
    per-channel statistics replaced by the style's.

    .. math:: y = \\sigma(s) \\frac{x - \\mu(x)}{\\sigma(x)} + \\mu(s)

    μ, σ per sample and channel over the positions, ``σ = √(Var + ε)`` with the unbiased
    variance as in the authors' code (``calc_mean_std``, ``eps=1e-5``). ``style`` is a feature
    map ``(N, C, *)`` or its ``(mean, std)`` pair, each ``(N, C)``. No parameters.

    >>> y = AdaIN()(torch.randn(2, 8, 16, 16), torch.randn(2, 8, 12, 12))
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def _stats(self, t: Tensor) -> tuple[Tensor, Tensor]:
        flat = t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))  # N = 0 too
        if flat.shape[-1] < 2:
            raise ValueError(
                f"AdaIN needs at least 2 positions per channel for the unbiased variance (got "
                f"shape {tuple(t.shape)})"
            )
        mean, var = moments(flat, (-1,))
        std = (bessel_correction(var, flat.shape[-1]) + self.eps).sqrt()
        return mean.to(t.dtype), std.to(t.dtype)

    def forward(self, content: Tensor, style: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if content.ndim < 3:
            raise ValueError(
                f"AdaIN expects a content feature map (N, C, *) (got {tuple(content.shape)})"
            )
        s_mean, s_std = style if isinstance(style, tuple) else self._stats(style)
        c_mean, c_std = self._stats(content)
        view = (*c_mean.shape, *([1] * (content.ndim - 2)))
        normalized = (content - c_mean.reshape(view)) / c_std.reshape(view)
        return normalized * s_std.reshape(view) + s_mean.reshape(view)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
