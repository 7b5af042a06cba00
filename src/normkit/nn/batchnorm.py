"""Batch normalization modules: ``BatchNorm`` (any feature axis) and ``BatchNorm1d/2d/3d``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._stats import NanPolicy

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNorm(nn.Module):
    """Batch normalization (Ioffe & Szegedy 2015, arXiv:1502.03167) with features on any axis.

    .. math:: y = \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\gamma + \\beta

    Training normalizes with the batch's biased moments and updates ``running_mean`` and the
    unbiased ``running_var`` as ``new = (1 − momentum)·old + momentum·batch`` (torch convention;
    ``momentum=None`` is a cumulative average); eval normalizes with the running statistics.
    Same constructor, parameters (``weight``, ``bias``) and buffers (``running_mean``,
    ``running_var``, ``num_batches_tracked``) as :class:`torch.nn.BatchNorm2d`, so state_dicts
    load both ways.

    Keyword-only extras: ``axis`` — the feature axis (1 like torch, −1 for channels-last/Keras
    layouts); ``nan_policy`` — what a batch with NaN/Inf statistics does to the running buffers
    (``"skip"``, the default, leaves them untouched; ``"raise"``; ``"propagate"`` as torch.nn);
    ``backend`` — ``"auto"`` or a name from :func:`normkit.backends.available`.

    Shape: ``(N, C, *)`` with ``axis=1``; ``(N, *, C)`` with ``axis=-1``. Output: same.

    >>> bn = BatchNorm(32, axis=-1)
    >>> y = bn(torch.randn(8, 10, 32))      # (batch, time, features)
    """

    _version = 2
    _min_ndim = 2
    _max_ndim: int | None = None

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
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be a positive int (got {num_features})")
        NF._check_nan_policy(nan_policy)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.axis = axis
        self.nan_policy: NanPolicy = nan_policy
        self.backend = backend
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, device=device),
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Zero the running mean, set the running variance to one, reset the batch counter."""
        if self.track_running_stats:
            self.running_mean.zero_()  # type: ignore[union-attr]
            self.running_var.fill_(1)  # type: ignore[union-attr]
            self.num_batches_tracked.zero_()  # type: ignore[union-attr]

    def reset_parameters(self) -> None:
        """Reset running statistics and set ``weight = 1``, ``bias = 0``."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x: Tensor) -> None:
        name = type(self).__name__
        if x.ndim < self._min_ndim or (self._max_ndim is not None and x.ndim > self._max_ndim):
            want = (
                f"{self._min_ndim}D"
                if self._min_ndim == self._max_ndim
                else f"{self._min_ndim}D to {self._max_ndim}D"
                if self._max_ndim
                else f"at least {self._min_ndim}D"
            )
            raise ValueError(
                f"{name} expects {want} input (got {x.ndim}D input of shape {tuple(x.shape)}); "
                "use the BatchNorm variant matching your input rank, or normkit.nn.BatchNorm"
            )
        if not -x.ndim <= self.axis < x.ndim or x.shape[self.axis] != self.num_features:
            got = x.shape[self.axis] if -x.ndim <= self.axis < x.ndim else "no such axis"
            raise ValueError(
                f"{name}({self.num_features}) expects {self.num_features} features on axis "
                f"{self.axis} (got input of shape {tuple(x.shape)}: {got}); set num_features to "
                "the input's feature count or pass the right axis="
            )

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mask`` (bool, training only) restricts the batch statistics
        and running averages to the ``True`` positions (see :func:`normkit.functional.batch_norm`).
        """
        self._check_input_dim(input)
        tracking = self.training and self.track_running_stats
        use_batch_stats = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return NF.batch_norm(
            input,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
            axis=self.axis,
            num_batches_tracked=self.num_batches_tracked if tracking else None,
            nan_policy=self.nan_policy,
            mask=mask,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
        if self.axis != 1:
            s += f", axis={self.axis}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Old torch checkpoints (version < 2) have no num_batches_tracked: start it at 0, as torch.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


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
