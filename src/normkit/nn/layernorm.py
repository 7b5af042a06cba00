"""Per-sample norms over features: ``LayerNorm``, ``RMSNorm``, ``LayerNorm2d``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._casting import CASTINGS, LAYER_NORM_CASTINGS, check_casting
from normkit._optional import require
from normkit.nn._base import ChannelAffineBase, _backend_repr, adds_options, init_affine

__all__ = ["LayerNorm", "LayerNorm2d", "RMSNorm"]


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any(int(s) < 1 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty positive sizes (got {shape})")
    return tuple(int(s) for s in shape)


def _preset(
    casting: str | None, offset: float | None, zero_centered: bool, allowed: Sequence[str]
) -> tuple[str | None, float]:
    """Checked ``(casting, offset)``: ``zero_centered`` means offset 1; ``gemma`` implies it."""
    if casting is not None:
        check_casting(casting, allowed, "casting")
    if zero_centered and offset not in (None, 1.0):
        raise ValueError(
            f"zero_centered=True means offset=1.0 (got offset={offset}); pass one of them"
        )
    if offset is None:
        offset = 1.0 if zero_centered or casting == "gemma" else 0.0
    return casting, float(offset)


def _preset_repr(casting: str | None, offset: float) -> str:
    return (f", casting={casting!r}" if casting else "") + (f", offset={offset}" if offset else "")


class LayerNorm(nn.Module):
    """Layer normalization (Ba, Kiros & Hinton 2016, arXiv:1607.06450); twin of :class:`torch.nn.LayerNorm`.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\odot \\gamma + \\beta

    Statistics per sample over the trailing ``normalized_shape`` dims, the same in train and
    eval. ``bias=False`` drops β (as torch ≥ 2.1). ``casting`` (``"torch"``, ``"llama"``,
    ``"gemma"``, ``"fp32"``) pins where low-precision inputs are cast, bit for bit (formulas in
    :mod:`normkit._casting`); ``zero_centered=True`` (or ``offset=o``) scales by ``o + γ`` with
    γ initialised to 0.

    >>> ln = LayerNorm(512)
    >>> y = ln(torch.randn(8, 20, 512))
    """

    weight: Tensor | None
    bias: Tensor | None

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        casting: str | None = None,
        offset: float | None = None,
        zero_centered: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.casting, self.offset = _preset(casting, offset, zero_centered, LAYER_NORM_CASTINGS)
        self.backend = backend
        init_affine(self, self.normalized_shape, elementwise_affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Scale ``offset + weight = 1`` (``weight = 1``, or 0 when zero-centred), ``bias = 0``."""
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.offset)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mask`` (bool) restricts the statistics to the ``True`` entries
        (see :func:`normkit.functional.layer_norm`)."""
        return NF.layer_norm(
            input,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            mask=mask,
            casting=self.casting,
            offset=self.offset,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
            + _preset_repr(self.casting, self.offset)
            + _backend_repr(self.backend)
        )


class RMSNorm(nn.Module):
    """RMS normalization (Zhang & Sennrich 2019, arXiv:1910.07467); twin of :class:`torch.nn.RMSNorm`.

    .. math:: y = \\frac{x}{\\sqrt{\\frac1n\\sum_i x_i^2 + \\epsilon}} \\odot \\gamma

    ``eps=None`` uses ``torch.finfo(x.dtype).eps`` (torch's default). bfloat16/float16 inputs
    accumulate in float32. ``casting`` (``"torch"``, ``"llama"``, ``"gemma"``, ``"t5"``,
    ``"fp32"``) pins the cast points so the output is bit for bit that of the named
    implementation (formulas in :mod:`normkit._casting`; :meth:`from_hf`/:meth:`to_hf` convert
    Hugging Face modules); ``zero_centered=True`` (or ``offset=o``) scales by ``o + γ`` with γ
    initialised to 0, as Gemma (``casting="gemma"`` implies it).

    >>> y = RMSNorm(4096)(torch.randn(2, 16, 4096))
    """

    weight: Tensor | None
    bias: Tensor | None

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        casting: str | None = None,
        offset: float | None = None,
        zero_centered: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.casting, self.offset = _preset(casting, offset, zero_centered, CASTINGS)
        self.backend = backend
        init_affine(self, self.normalized_shape, elementwise_affine, False, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Scale ``offset + weight = 1``: ``weight = 1``, or 0 when zero-centred."""
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.offset)

    def forward(self, input: Tensor) -> Tensor:
        return NF.rms_norm(
            input,
            self.normalized_shape,
            self.weight,
            self.eps,
            casting=self.casting,
            offset=self.offset,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
            + _preset_repr(self.casting, self.offset)
            + _backend_repr(self.backend)
        )

    @classmethod
    def from_hf(
        cls, module: nn.Module, *, casting: str | None = None, backend: str = "auto"
    ) -> RMSNorm:
        """The twin of a Hugging Face transformers RMS norm, same weights, same bits.

        The preset comes from the class name (``casting`` overrides it): ``Gemma*RMSNorm`` →
        ``"gemma"`` (zero-centred), ``*T5LayerNorm`` → ``"t5"``, any other ``*RMSNorm`` with a
        ``variance_epsilon`` (``LlamaRMSNorm`` and its copies: Mistral, Qwen2, ...) → ``"llama"``.
        The weight is copied (same dtype and device).

        >>> class LlamaRMSNorm(nn.Module):  # stands in for transformers' class
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight, self.variance_epsilon = nn.Parameter(torch.ones(8)), 1e-6
        >>> RMSNorm.from_hf(LlamaRMSNorm())
        RMSNorm((8,), eps=1e-06, elementwise_affine=True, casting='llama')
        """
        name = type(module).__name__
        weight = getattr(module, "weight", None)
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if casting is None:
            if "Gemma" in name and name.endswith("RMSNorm"):
                casting = "gemma"
            elif name.endswith("T5LayerNorm"):
                casting = "t5"
            elif name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
                casting = "llama"
        if casting is None or not isinstance(weight, Tensor) or eps is None:
            raise ValueError(
                f"RMSNorm.from_hf: cannot tell the casting preset of {name} (expected a "
                "transformers RMS norm with weight and variance_epsilon/eps, e.g. LlamaRMSNorm, "
                f"GemmaRMSNorm, T5LayerNorm); pass casting= one of {CASTINGS}"
            )
        norm = cls(
            tuple(weight.shape),
            eps=float(eps),
            device=weight.device,
            dtype=weight.dtype,
            casting=casting,
            backend=backend,
        )
        assert norm.weight is not None
        with torch.no_grad():
            norm.weight.copy_(weight)
        return norm

    def to_hf(self) -> nn.Module:
        """The Hugging Face transformers module this norm's preset mirrors, same weights.

        ``"llama"`` → ``LlamaRMSNorm``, ``"gemma"`` → ``GemmaRMSNorm``, ``"t5"`` →
        ``T5LayerNorm``; needs ``transformers`` (``pip install 'normkit[hf]'``) and a 1-d
        ``normalized_shape``.
        """
        classes = {
            ("llama", 0.0): ("llama", "LlamaRMSNorm"),
            ("gemma", 1.0): ("gemma", "GemmaRMSNorm"),
            ("t5", 0.0): ("t5", "T5LayerNorm"),
        }
        key = (self.casting, self.offset)
        if key not in classes or self.weight is None or len(self.normalized_shape) != 1:
            raise ValueError(
                f"RMSNorm.to_hf: no transformers module has casting={self.casting!r}, "
                f"offset={self.offset}, elementwise_affine={self.elementwise_affine}, "
                f"normalized_shape={self.normalized_shape}; supported: 1-d weighted norms with "
                "casting='llama', 'gemma' (offset 1) or 't5' (offset 0)"
            )
        family, cls_name = classes[key]
        module = require(
            f"transformers.models.{family}.modeling_{family}", extra="hf", feature="RMSNorm.to_hf"
        )
        eps = self.eps if self.eps is not None else torch.finfo(self.weight.dtype).eps
        hf = getattr(module, cls_name)(self.normalized_shape[0], eps=eps)
        hf = hf.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            hf.weight.copy_(self.weight)
        return hf


class LayerNorm2d(ChannelAffineBase):
    """Layer norm across channels at each position of a channels-first input (ConvNeXt, timm).

    .. math:: y_{n,:,p} = \\frac{x_{n,:,p} - \\mu_{n,p}}{\\sqrt{\\sigma^2_{n,p} + \\epsilon}} \\odot \\gamma + \\beta

    Liu et al. 2022 (ConvNeXt, arXiv:2201.03545). Same parameters and default ``eps=1e-6`` as
    ``timm.layers.LayerNorm2d``; works for any ``(N, C, *)`` input, channels_last kept.

    >>> y = LayerNorm2d(96)(torch.randn(2, 96, 56, 56))
    """

    weight: Tensor | None
    bias: Tensor | None

    @adds_options(ChannelAffineBase, eps=1e-6)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input, "; for channels-last tensors use LayerNorm")
        return NF.layer_norm_2d(input, self.weight, self.bias, self.eps, backend=self.backend)
