"""Batch renormalization modules: ``BatchRenorm`` (any feature axis) and ``BatchRenorm1d/2d/3d``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from normkit import functional as NF
from normkit.nn._base import adds_options
from normkit.nn.batchnorm import BatchNorm

__all__ = ["BatchRenorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d"]

Schedule = Callable[[int], tuple[float, float]]


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017, arXiv:1702.03275): the fix for small or non-i.i.d.
    batches that keeps batch norm's training speed.

    .. math::
        r = \\mathrm{clip}_{[1/r_{max},\\,r_{max}]}\\Big(\\frac{\\sigma_B}{\\sigma}\\Big),\\quad
        d = \\mathrm{clip}_{[-d_{max},\\,d_{max}]}\\Big(\\frac{\\mu_B - \\mu}{\\sigma}\\Big),\\quad
        y = \\gamma\\Big(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\Big) + \\beta

    (``r``, ``d`` without gradient; ``μ``, ``σ²`` the running statistics). Eval and the running
    statistics are batch norm's, and so are the constructor, parameters and buffers: a
    :class:`torch.nn.BatchNorm2d` state_dict loads. ``r_max=1, d_max=0`` is exactly batch norm.

    Keyword-only: ``r_max`` (≥ 1), ``d_max`` (≥ 0) — the final clipping limits;
    ``warmup_steps`` — ramp the limits linearly from (1, 0) to (``r_max``, ``d_max``) over that
    many training steps (counted by ``num_batches_tracked``), because the running statistics are
    poor estimates early on (the paper keeps plain BN for the first 5k steps, then relaxes to
    r_max=3, d_max=5); ``schedule`` — instead, a callable ``step -> (r_max, d_max)``;
    ``axis``, ``nan_policy``, ``backend`` as :class:`normkit.nn.BatchNorm`.

    Shape: ``(N, C, *)`` with ``axis=1``; ``(N, *, C)`` with ``axis=-1``. Output: same.

    >>> brn = BatchRenorm2d(32, r_max=3.0, d_max=5.0, warmup_steps=1000)
    >>> y = brn(torch.randn(4, 32, 16, 16))
    """

    @adds_options(BatchNorm)
    def __init__(
        self,
        *args: Any,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
        schedule: Schedule | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        name = type(self).__name__
        if not self.track_running_stats:
            raise ValueError(
                f"{name} needs track_running_stats=True (its correction is relative to the "
                "running statistics); use BatchNorm(track_running_stats=False) instead"
            )
        if r_max < 1 or d_max < 0:
            raise ValueError(
                f"{name}: r_max must be >= 1 and d_max >= 0 (got r_max={r_max}, d_max={d_max}); "
                "r_max=1, d_max=0 is plain batch norm, the paper relaxes to r_max=3, d_max=5"
            )
        if warmup_steps < 0:
            raise ValueError(f"{name}: warmup_steps must be >= 0 (got {warmup_steps})")
        if schedule is not None and warmup_steps:
            raise ValueError(f"{name}: pass warmup_steps or schedule, not both")
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule

    def clip_limits(self) -> tuple[float | Tensor, float | Tensor]:
        """The ``(r_max, d_max)`` used by the next training step.

        With ``warmup_steps`` they are tensors computed on the buffers' device (no host sync).
        """
        step = self.num_batches_tracked
        assert step is not None
        if self.schedule is not None:
            r_max, d_max = self.schedule(int(step))
            return float(r_max), float(d_max)
        if self.warmup_steps:
            t = (step.to(torch.float64) / self.warmup_steps).clamp(max=1.0)
            return 1.0 + t * (self.r_max - 1.0), t * self.d_max
        return self.r_max, self.d_max

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Renormalize ``input`` (training) or batch-normalize it with the running statistics."""
        self._check_input_dim(input)
        if not self.training:  # eval renorm is batch norm with the running statistics
            return self.apply_functional(NF.batch_norm, input, mask)
        r_max, d_max = self.clip_limits()
        return self.apply_functional(NF.batch_renorm, input, mask, r_max=r_max, d_max=d_max)

    def extra_options(self) -> str:
        s = f", r_max={self.r_max}, d_max={self.d_max}"
        if self.warmup_steps:
            s += f", warmup_steps={self.warmup_steps}"
        return s + super().extra_options()


class BatchRenorm1d(BatchRenorm):
    """:class:`BatchRenorm` over ``(N, C)`` or ``(N, C, L)`` inputs.

    >>> y = BatchRenorm1d(64)(torch.randn(4, 64))
    """

    _min_ndim, _max_ndim = 2, 3


class BatchRenorm2d(BatchRenorm):
    """:class:`BatchRenorm` over ``(N, C, H, W)`` inputs (channels_last kept).

    >>> y = BatchRenorm2d(16)(torch.randn(2, 16, 8, 8))
    """

    _min_ndim, _max_ndim = 4, 4


class BatchRenorm3d(BatchRenorm):
    """:class:`BatchRenorm` over ``(N, C, D, H, W)`` inputs.

    >>> y = BatchRenorm3d(4)(torch.randn(2, 4, 4, 8, 8))
    """

    _min_ndim, _max_ndim = 5, 5
