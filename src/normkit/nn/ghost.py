"""Ghost batch normalization modules: ``GhostBatchNorm`` (any feature axis), ``GhostBatchNorm1d/2d``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normkit import functional as NF
from normkit._stats import NanPolicy
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

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        virtual_batch_size: int = 32,
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        if virtual_batch_size < 1:
            raise ValueError(
                f"{type(self).__name__}: virtual_batch_size must be a positive int (got "
                f"{virtual_batch_size})"
            )
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
            axis=axis,
            nan_policy=nan_policy,
            backend=backend,
        )
        self.virtual_batch_size = int(virtual_batch_size)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Ghost-batch-normalize ``input`` (training) or batch-normalize it with running stats."""
        self._check_input_dim(input)
        running_mean, running_var, use_batch_stats, num_batches_tracked = self.batch_state()
        if not use_batch_stats:
            return super().forward(input, mask)
        return NF.ghost_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            True,
            self.momentum,
            self.eps,
            virtual_batch_size=self.virtual_batch_size,
            axis=self.axis,
            num_batches_tracked=num_batches_tracked,
            nan_policy=self.nan_policy,
            mask=mask,
            backend=self.backend,
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
