"""Batch normalization modules: ``BatchNorm`` (any feature axis) and ``BatchNorm1d/2d/3d``."""

from __future__ import annotations

from torch import Tensor

from normkit import functional as NF
from normkit.nn._base import BatchNormBase

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNorm(BatchNormBase):
    """Batch normalization (Ioffe & Szegedy 2015, arXiv:1502.03167) with features on any axis.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\gamma + \\beta

    Training normalizes with the batch's biased moments and updates ``running_mean`` and the
    unbiased ``running_var`` as ``new = (1 − momentum)·old + momentum·batch`` (torch convention;
    ``momentum=None`` is a cumulative average); eval normalizes with the running statistics.
    Same constructor (``bias=False`` included), parameters (``weight``, ``bias``) and buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``) as :class:`torch.nn.BatchNorm2d`,
    so state_dicts load both ways.

    Keyword-only extras: ``axis`` — the feature axis (1 like torch, −1 for channels-last/Keras
    layouts); ``nan_policy`` — what a batch with NaN/Inf statistics does to the running buffers
    (``"skip"``, the default, leaves them untouched; ``"raise"``; ``"propagate"`` as torch.nn);
    ``backend`` — ``"auto"`` or a name from :func:`normkit.backends.available`.

    Shape: ``(N, C, *)`` with ``axis=1``; ``(N, *, C)`` with ``axis=-1``. Output: same.

    >>> bn = BatchNorm(32, axis=-1)
    >>> y = bn(torch.randn(8, 10, 32))      # (batch, time, features)
    """

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mask`` (bool, training only) restricts the batch statistics
        and running averages to the ``True`` positions (see :func:`normkit.functional.batch_norm`).
        """
        self._check_input_dim(input)
        return self.apply_functional(NF.batch_norm, input, mask)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C)`` or ``(N, C, L)`` inputs; twin of :class:`torch.nn.BatchNorm1d`.

    >>> y = BatchNorm1d(64)(torch.randn(32, 64))
    """

    _min_ndim, _max_ndim = 2, 3


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, H, W)`` inputs; twin of :class:`torch.nn.BatchNorm2d`.

    channels_last inputs give channels_last outputs.

    >>> y = BatchNorm2d(16)(torch.randn(8, 16, 32, 32))
    """

    _min_ndim, _max_ndim = 4, 4


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` over ``(N, C, D, H, W)`` inputs; twin of :class:`torch.nn.BatchNorm3d`.

    >>> y = BatchNorm3d(4)(torch.randn(2, 4, 8, 8, 8))
    """

    _min_ndim, _max_ndim = 5, 5
