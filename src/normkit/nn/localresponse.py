"""Local response normalization across channels: ``LocalResponseNorm`` and ``CrossMapLRN2d``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from normkit import functional as NF
from normkit._checks import check_positive
from normkit.nn._base import _backend_repr, adds_options

__all__ = ["CrossMapLRN2d", "LocalResponseNorm"]


class LocalResponseNorm(nn.Module):
    """Local response normalization (Krizhevsky, Sutskever & Hinton 2012, AlexNet §3.3); twin of
    :class:`torch.nn.LocalResponseNorm`.

    .. math:: y_c = x_c \\Big(k + \\frac{\\alpha}{n}
        \\sum_{c'=c-\\lfloor n/2\\rfloor}^{c+\\lfloor (n-1)/2\\rfloor} x_{c'}^2\\Big)^{-\\beta}

    Each channel is divided by the energy of its ``size`` neighbouring channels (zeros beyond the
    edges). No parameters or buffers; the same in train and eval. float16/bfloat16 inputs are
    computed in float32. Keyword-only ``backend`` as the other layers.

    Shape: ``(N, C, *)`` with at least one position dim. Output: same.

    >>> lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)   # AlexNet's values
    >>> y = lrn(torch.randn(2, 96, 27, 27))
    """

    def __init__(
        self,
        size: int,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive(type(self).__name__, size=size)
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return NF.local_response_norm(
            input, self.size, self.alpha, self.beta, self.k, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}" + _backend_repr(
            self.backend
        )


class CrossMapLRN2d(LocalResponseNorm):
    """Cross-map local response normalization of Lua Torch's ``SpatialCrossMapLRN``; twin of
    :class:`torch.nn.CrossMapLRN2d` (same constructor and outputs, correct gradients).

    .. math:: y_c = x_c \\Big(k + \\frac{\\alpha}{n}
        \\sum_{c'=c-h}^{c+h} x_{c'}^2\\Big)^{-\\beta},\\qquad h = \\lfloor (n-1)/2 \\rfloor

    a window of ``size`` channels centred on ``c`` (``size − 1`` for an even ``size``), so for
    odd sizes it is :class:`LocalResponseNorm`. For 4-D inputs only, as torch's.

    torch 2.13's Python port differs in two ways, kept out here: channel 0 stays in the window
    of every later channel (``c > pre_pad`` where Lua's 1-based loop meant the first channel),
    so its outputs differ from the formula once ``C > h + 1``; and its hand-written backward
    fails ``torch.autograd.gradcheck`` (and indexes out of range for ``size=1``). This layer
    computes the formula and differentiates it with autograd.

    >>> y = CrossMapLRN2d(5, alpha=1e-4, beta=0.75, k=2.0)(torch.randn(2, 16, 8, 8))
    """

    @adds_options(LocalResponseNorm, k=1)  # torch's default is the int 1 here
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim != 4:
            raise ValueError(
                f"CrossMapLRN2d expects 4D input (N, C, H, W) (got {input.ndim}D input of shape "
                f"{tuple(input.shape)}); use LocalResponseNorm for other ranks"
            )
        window = self.size - (1 - self.size % 2)  # the centred window: odd length
        alpha = self.alpha * window / self.size  # keeps the 1/size of the formula
        return NF.local_response_norm(input, window, alpha, self.beta, self.k, backend=self.backend)
