"""Per-sample norms over features: ``LayerNorm``, ``RMSNorm``, ``LayerNorm2d``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF

__all__ = ["LayerNorm", "LayerNorm2d", "RMSNorm"]


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any(int(s) < 1 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty positive sizes (got {shape})")
    return tuple(int(s) for s in shape)


class LayerNorm(nn.Module):
    """Layer normalization (Ba, Kiros & Hinton 2016, arXiv:1607.06450); twin of :class:`torch.nn.LayerNorm`.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\odot \\gamma + \\beta

    Statistics per sample over the trailing ``normalized_shape`` dims, the same in train and
    eval. ``bias=False`` drops β (as torch ≥ 2.1).

    >>> ln = LayerNorm(512)
    >>> y = ln(torch.randn(8, 20, 512))
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.backend = backend
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
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
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(nn.Module):
    """RMS normalization (Zhang & Sennrich 2019, arXiv:1910.07467); twin of :class:`torch.nn.RMSNorm`.

    .. math:: y = \\frac{x}{\\sqrt{\\frac1n\\sum_i x_i^2 + \\epsilon}} \\odot \\gamma

    ``eps=None`` uses ``torch.finfo(x.dtype).eps`` (torch's default). bfloat16/float16 inputs
    accumulate in float32.

    >>> y = RMSNorm(4096)(torch.randn(2, 16, 4096))
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.backend = backend
        if elementwise_affine:
            self.weight = nn.Parameter(
                torch.empty(self.normalized_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight = 1``."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return NF.rms_norm(
            input, self.normalized_shape, self.weight, self.eps, backend=self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class LayerNorm2d(nn.Module):
    """Layer norm across channels at each position of a channels-first input (ConvNeXt, timm).

    .. math:: y_{n,:,p} = \\frac{x_{n,:,p} - \\mu_{n,p}}{\\sqrt{\\sigma^2_{n,p} + \\epsilon}} \\odot \\gamma + \\beta

    Liu et al. 2022 (ConvNeXt, arXiv:2201.03545). Same parameters and default ``eps=1e-6`` as
    ``timm.layers.LayerNorm2d``; works for any ``(N, C, *)`` input, channels_last kept.

    >>> y = LayerNorm2d(96)(torch.randn(2, 96, 56, 56))
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.backend = backend
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"LayerNorm2d({self.num_channels}) expects input (N, {self.num_channels}, ...) "
                f"(got shape {tuple(input.shape)}); for channels-last tensors use LayerNorm"
            )
        return NF.layer_norm_2d(input, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
