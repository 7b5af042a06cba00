"""Ghost batch normalization modules: ``GhostBatchNorm`` (any feature axis), ``GhostBatchNorm1d/2d``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from normkit import functional as NF
from normkit._checks import check_positive
from normkit.nn._base import adds_options
from normkit.nn.batchnorm import BatchNorm

__all__ = ["GhostBatchNorm", "GhostBatchNorm1d", "GhostBatchNorm2d"]


class GhostBatchNorm(BatchNorm):
    """Ghost batch normalization (Hoffer, Hubara & Soudry 2017, arXiv:1705.08741): batch-norm
    statistics over virtual batches of ``virtual_batch_size`` samples of a large batch.

    .. math:: y_{i} = \\frac{x_i - \\mu_{B_k}}{\\sqrt{\\sigma^2_{B_k} + \\epsilon}}\\gamma + \\beta,
        \\quad B_k = \\text{the } k\\text{-th block of } v \\text{ samples}

    Large-batch training keeps the noise (and generalization) of small-batch statistics. In
    training each virtual batch is batch-normalized in turn and updates the running statistics
    once (Algorithm 1 of the paper), so ``num_batches_tracked`` counts virtual batches. When the
    batch size is not a multiple of ``virtual_batch_size``, the last virtual batch holds the rest;
    a virtual batch larger than the batch raises. Eval is plain batch norm. Same parameters and
    buffers as :class:`torch.nn.BatchNorm2d` (state_dicts load both ways).

    Keyword-only: ``virtual_batch_size`` (default 32); ``axis``, ``nan_policy``, ``backend`` as
    :class:`normkit.nn.BatchNorm`.

    >>> gbn = GhostBatchNorm2d(64, virtual_batch_size=32)
    >>> y = gbn(torch.randn(256, 64, 8, 8))   # 8 virtual batches
    """

    @adds_options(BatchNorm)
    def __init__(self, *args: Any, virtual_batch_size: int = 32, **kwargs: Any) -> None:
        check_positive(type(self).__name__, virtual_batch_size=virtual_batch_size)
        super().__init__(*args, **kwargs)
        self.virtual_batch_size = int(virtual_batch_size)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Ghost-batch-normalize ``input`` (training) or batch-normalize it with running stats."""
        self._check_input_dim(input)
        if not self.uses_batch_stats:  # the running statistics normalize: plain batch norm
            return self.apply_functional(NF.batch_norm, input, mask)
        return self.apply_functional(
            NF.ghost_batch_norm, input, mask, virtual_batch_size=self.virtual_batch_size
        )

    def extra_options(self) -> str:
        return f", virtual_batch_size={self.virtual_batch_size}" + super().extra_options()


class GhostBatchNorm1d(GhostBatchNorm):
    """:class:`GhostBatchNorm` over ``(N, C)`` or ``(N, C, L)`` inputs (TabNet's choice).

    >>> y = GhostBatchNorm1d(16, virtual_batch_size=128)(torch.randn(1024, 16))
    """

    _min_ndim, _max_ndim = 2, 3


class GhostBatchNorm2d(GhostBatchNorm):
    """:class:`GhostBatchNorm` over ``(N, C, H, W)`` inputs (channels_last kept).

    >>> y = GhostBatchNorm2d(8, virtual_batch_size=4)(torch.randn(16, 8, 6, 6))
    """

    _min_ndim, _max_ndim = 4, 4
