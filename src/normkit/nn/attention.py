"""Norms around attention and residual blocks: ``QKNorm``, ``UnitNormalization``,
``ResidualNorm`` (Pre-LN, Post-LN, DeepNorm, sandwich) and DeepNorm's α/β rules."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from normkit.nn.layernorm import LayerNorm, RMSNorm

__all__ = [
    "QKNorm",
    "ResidualNorm",
    "UnitNormalization",
    "deepnorm_coefficients",
    "deepnorm_init_",
]


class UnitNormalization(nn.Module):
    """Scale each vector along ``axis`` to unit L2 norm; the twin of Keras'
    ``keras.layers.UnitNormalization``.

    .. math:: y = \\frac{x}{\\sqrt{\\max(\\sum_i x_i^2, \\epsilon)}}

    ``eps=1e-12`` as Keras (a zero vector stays zero). ``axis`` an int or a tuple of ints;
    float16/bfloat16 compute in float32. No parameters.

    >>> y = UnitNormalization()(torch.randn(4, 16))
    """

    def __init__(self, axis: int | tuple[int, ...] = -1, eps: float = 1e-12) -> None:
        super().__init__()
        self.axis = axis
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        if any(not -input.ndim <= a < input.ndim for a in axes):
            raise ValueError(
                f"UnitNormalization(axis={self.axis}) is out of range for an input of shape "
                f"{tuple(input.shape)}"
            )
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        x = input.to(acc)
        square_sum = x.square().sum(dim=axes, keepdim=True)
        return (x * torch.rsqrt(square_sum.clamp_min(self.eps))).to(input.dtype)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, eps={self.eps}"


_QK_KINDS = ("rms", "layer", "l2")


class QKNorm(nn.Module):
    """Normalize queries and keys per head before the attention logits (Dehghani et al. 2023,
    ViT-22B, arXiv:2302.05442; Wortsman et al. 2023, arXiv:2309.14322): bounds the logits, whose
    growth makes training at high learning rates diverge.

    .. math:: \\mathrm{logits} = \\frac{\\mathrm{N}_q(q)\\,\\mathrm{N}_k(k)^\\top}{\\sqrt{d}}

    ``kind``: ``"rms"`` (RMSNorm, OLMo-2/Qwen3), ``"layer"`` (LayerNorm, ViT-22B) or ``"l2"``
    (unit vectors times a learnable per-dim gain, cosine attention: then the ``1/√d`` scale is
    usually replaced by a learnable temperature). q and k have separate parameters, each over
    the last dim (``head_dim``) of ``(..., heads, tokens, head_dim)`` tensors.

    >>> qk = QKNorm(64)
    >>> q, k = qk(torch.randn(2, 8, 16, 64), torch.randn(2, 8, 16, 64))
    """

    def __init__(
        self,
        head_dim: int,
        kind: str = "rms",
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if kind not in _QK_KINDS:
            raise ValueError(f"QKNorm: kind must be one of {_QK_KINDS} (got {kind!r})")
        self.head_dim, self.kind, self.eps = head_dim, kind, eps
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if kind == "rms":
            self.q_norm: nn.Module = RMSNorm(
                head_dim, eps, elementwise_affine, backend=backend, **factory
            )
            self.k_norm: nn.Module = RMSNorm(
                head_dim, eps, elementwise_affine, backend=backend, **factory
            )
        elif kind == "layer":
            self.q_norm = LayerNorm(head_dim, eps, elementwise_affine, backend=backend, **factory)
            self.k_norm = LayerNorm(head_dim, eps, elementwise_affine, backend=backend, **factory)
        else:
            self.q_norm = _ScaledUnit(head_dim, eps, elementwise_affine, **factory)
            self.k_norm = _ScaledUnit(head_dim, eps, elementwise_affine, **factory)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        for name, t in (("q", q), ("k", k)):
            if t.shape[-1] != self.head_dim:
                raise ValueError(
                    f"QKNorm(head_dim={self.head_dim}) expects {name} with last dim "
                    f"{self.head_dim} (got shape {tuple(t.shape)}); split heads first"
                )
        return self.q_norm(q), self.k_norm(k)

    def extra_repr(self) -> str:
        return f"{self.head_dim}, kind={self.kind!r}, eps={self.eps}"


class _ScaledUnit(nn.Module):
    """L2 normalization over the last dim times a per-dim gain (QKNorm's ``"l2"`` kind)."""

    def __init__(self, dim: int, eps: float, affine: bool, **factory: Any) -> None:
        super().__init__()
        self.unit = UnitNormalization(-1, eps * eps)
        self.weight = nn.Parameter(torch.ones(dim, **factory)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.unit(x)
        return (y * self.weight).to(x.dtype) if self.weight is not None else y


# --------------------------------------------------------------------------- placement

_PLACEMENTS = ("pre", "post", "deepnorm", "sandwich")
_ARCHS = ("encoder", "decoder", "encoder-decoder")


def deepnorm_coefficients(
    num_layers: int, arch: str = "encoder", num_decoder_layers: int | None = None
) -> tuple[float, float] | tuple[tuple[float, float], tuple[float, float]]:
    """DeepNorm's residual scale α and init gain β (Wang et al. 2022, arXiv:2203.00555, Fig. 2).

    ``"encoder"`` (N layers): α = (2N)^¼, β = (8N)^-¼. ``"decoder"`` (M layers, decoder-only):
    α = (2M)^¼, β = (8M)^-¼. ``"encoder-decoder"`` (N encoder, M decoder layers): returns
    ``((α_enc, β_enc), (α_dec, β_dec))`` with α_enc = 0.81(N⁴M)^(1/16), β_enc = 0.87(N⁴M)^(-1/16),
    α_dec = (3M)^¼, β_dec = (12M)^-¼.

    >>> alpha, beta = deepnorm_coefficients(12)  # (24^¼, 96^-¼)
    >>> round(alpha, 4), round(beta, 4)
    (2.2134, 0.3195)
    """
    if arch not in _ARCHS:
        raise ValueError(f"deepnorm_coefficients: arch must be one of {_ARCHS} (got {arch!r})")
    if num_layers < 1:
        raise ValueError(f"deepnorm_coefficients: num_layers must be positive (got {num_layers})")
    if arch != "encoder-decoder":
        return (2 * num_layers) ** 0.25, (8 * num_layers) ** -0.25
    if num_decoder_layers is None or num_decoder_layers < 1:
        raise ValueError(
            "deepnorm_coefficients: arch='encoder-decoder' needs num_decoder_layers (M)"
        )
    n, m = num_layers, num_decoder_layers
    enc = (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16))
    return enc, ((3 * m) ** 0.25, (12 * m) ** -0.25)


def deepnorm_init_(
    module: nn.Module, beta: float, skip: tuple[str, ...] = ("q_proj", "k_proj", "query", "key")
) -> nn.Module:
    """DeepNorm's initialisation: Xavier-normal weights with gain ``beta`` for every
    ``nn.Linear`` in ``module`` (FFN, value and output projections), gain 1 for those whose
    name ends with one of ``skip`` (query and key projections); biases to zero. In place.

    >>> alpha, beta = deepnorm_coefficients(12)                  # a 12-layer encoder
    >>> block = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "v_proj": nn.Linear(8, 8)})
    >>> block = deepnorm_init_(block, beta)
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            gain = 1.0 if name.split(".")[-1] in skip else beta
            nn.init.xavier_normal_(sub.weight, gain=gain)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    return module


class ResidualNorm(nn.Module):
    """A residual block ``x → x + f(x)`` with its norm placed as ``placement`` says.

    ==============  ====================================  =======================================
    placement       y                                     reference
    ==============  ====================================  =======================================
    ``"pre"``       ``x + f(N(x))``                       Pre-LN (Xiong et al. 2020, 2002.04745)
    ``"post"``      ``N(x + f(x))``                       Post-LN (Vaswani et al. 2017)
    ``"deepnorm"``  ``N(α·x + f(x))``, f initialised      DeepNorm (Wang et al. 2022, 2203.00555)
                    with gain β
    ``"sandwich"``  ``x + N₂(f(N₁(x)))``                  Sandwich-LN (Ding et al. 2021, CogView)
    ==============  ====================================  =======================================

    ``norm`` is ``"ln"`` (:class:`~normkit.nn.LayerNorm`), ``"rms"`` or a factory ``dim →
    module``. DeepNorm needs ``num_layers`` (and ``arch``) for α and β
    (:func:`deepnorm_coefficients`), or explicit ``alpha``/``beta``; its block is re-initialised
    by :func:`deepnorm_init_` unless ``beta=None`` is passed with ``alpha``. Post-LN needs a
    learning-rate warm-up to train deep stacks; Pre-LN does not (Xiong et al.).

    >>> block = ResidualNorm(nn.Linear(32, 32), 32, placement="pre")
    >>> y = block(torch.randn(4, 10, 32))
    """

    def __init__(
        self,
        block: nn.Module,
        dim: int,
        placement: str = "pre",
        norm: str | Any = "ln",
        *,
        num_layers: int | None = None,
        arch: str = "encoder",
        alpha: float | None = None,
        beta: float | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if placement not in _PLACEMENTS:
            raise ValueError(
                f"ResidualNorm: placement must be one of {_PLACEMENTS} (got {placement!r})"
            )
        self.block, self.dim, self.placement = block, dim, placement
        make = _norm_factory(norm, eps)
        self.norm = make(dim)
        self.norm2 = make(dim) if placement == "sandwich" else None
        self.alpha = 1.0
        if placement == "deepnorm":
            if alpha is None:
                if num_layers is None:
                    raise ValueError(
                        "ResidualNorm(placement='deepnorm') needs num_layers (for α and β) or "
                        "an explicit alpha"
                    )
                if arch not in ("encoder", "decoder"):
                    raise ValueError(
                        f"ResidualNorm: arch must be 'encoder' or 'decoder' (got {arch!r}); for "
                        "encoder-decoder stacks pass alpha and beta from deepnorm_coefficients"
                    )
                alpha, beta = cast("tuple[float, float]", deepnorm_coefficients(num_layers, arch))
            self.alpha = float(alpha)
            if beta is not None:
                deepnorm_init_(self.block, float(beta))

    def forward(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.placement == "pre":
            return input + self.block(self.norm(input), *args, **kwargs)
        if self.placement == "sandwich":
            assert self.norm2 is not None
            return input + self.norm2(self.block(self.norm(input), *args, **kwargs))
        x = input * self.alpha if self.alpha != 1.0 else input
        return self.norm(x + self.block(input, *args, **kwargs))

    def extra_repr(self) -> str:
        extra = f", alpha={self.alpha:.4g}" if self.placement == "deepnorm" else ""
        return f"{self.dim}, placement={self.placement!r}{extra}"


def _norm_factory(norm: str | Any, eps: float) -> Any:
    if norm == "ln":
        return lambda d: LayerNorm(d, eps)
    if norm == "rms":
        return lambda d: RMSNorm(d, eps)
    if callable(norm):
        return norm
    raise ValueError(
        f"ResidualNorm: norm must be 'ln', 'rms' or a factory dim -> module (got {norm!r})"
    )
