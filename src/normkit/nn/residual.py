"""Fused residual norms: ``AddLayerNorm`` and ``AddRMSNorm`` (add + norm in one pass)."""

from __future__ import annotations

from torch import Tensor

from normkit import functional as NF
from normkit.nn.layernorm import LayerNorm, RMSNorm

__all__ = ["AddLayerNorm", "AddRMSNorm"]


class AddLayerNorm(LayerNorm):
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

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return NF.add_layer_norm(
            input,
            residual,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            backend=self.backend,
        )


class AddRMSNorm(RMSNorm):
    """Residual add fused with RMS norm: ``forward(x, residual) -> (RMS(x + residual), x + residual)``.

    .. math:: s = x + r, \\qquad y = \\frac{s}{\\sqrt{\\frac1n\\sum_i s_i^2 + \\epsilon}} \\odot \\gamma

    RMSNorm of Zhang & Sennrich 2019 (arXiv:1910.07467) after the residual add (LLaMA-style
    blocks). Same parameters and ``state_dict`` keys as :class:`torch.nn.RMSNorm`; ``eps=None``
    uses ``torch.finfo(x.dtype).eps``. See :func:`normkit.functional.add_rms_norm`.

    >>> norm = AddRMSNorm(512)
    >>> y, x = norm(torch.randn(2, 10, 512), torch.randn(2, 10, 512))
    """

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return NF.add_rms_norm(
            input, residual, self.normalized_shape, self.weight, self.eps, backend=self.backend
        )
