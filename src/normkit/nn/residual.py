"""Fused residual norms: ``AddLayerNorm`` and ``AddRMSNorm`` (add + norm in one pass)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF

__all__ = ["AddLayerNorm", "AddRMSNorm"]


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any(int(s) < 1 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty positive sizes (got {shape})")
    return tuple(int(s) for s in shape)


class AddLayerNorm(nn.Module):
    """Residual add fused with layer norm: ``forward(x, residual) -> (LN(x + residual), x + residual)``.

    .. math:: s = x + r, \\qquad y = \\frac{s - \\mathrm{E}[s]}{\\sqrt{\\mathrm{Var}[s] + \\epsilon}} \\odot \\gamma + \\beta

    Layer norm of Ba, Kiros & Hinton 2016 (arXiv:1607.06450) after the residual add of a pre-norm
    transformer block. Same parameters and ``state_dict`` keys as :class:`torch.nn.LayerNorm`
    (a LayerNorm's state loads into it); with the ``numba`` backend both outputs come from one
    pass over memory. See :func:`normkit.functional.add_layer_norm`.

    Shapes: ``x``, ``residual``: ``(*, *normalized_shape)``; returns two tensors of that shape.

    >>> norm = AddLayerNorm(512)
    >>> x, h = torch.randn(2, 10, 512), torch.randn(2, 10, 512)
    >>> y, x = norm(h, x)  # y feeds the next sublayer, x is the new residual stream
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
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return NF.add_layer_norm(
            input,
            residual,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class AddRMSNorm(nn.Module):
    """Residual add fused with RMS norm: ``forward(x, residual) -> (RMS(x + residual), x + residual)``.

    .. math:: s = x + r, \\qquad y = \\frac{s}{\\sqrt{\\frac1n\\sum_i s_i^2 + \\epsilon}} \\odot \\gamma

    RMSNorm of Zhang & Sennrich 2019 (arXiv:1910.07467) after the residual add (LLaMA-style
    blocks). Same parameters and ``state_dict`` keys as :class:`torch.nn.RMSNorm`; ``eps=None``
    uses ``torch.finfo(x.dtype).eps``. See :func:`normkit.functional.add_rms_norm`.

    >>> norm = AddRMSNorm(512)
    >>> y, x = norm(torch.randn(2, 10, 512), torch.randn(2, 10, 512))
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
                torch.ones(self.normalized_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        """``weight = 1``."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return NF.add_rms_norm(
            input, residual, self.normalized_shape, self.weight, self.eps, backend=self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
