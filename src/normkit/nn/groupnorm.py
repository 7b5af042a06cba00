"""Per-sample norms over channel groups and positions: ``GroupNorm``, ``InstanceNorm*``,
``ChannelNorm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normkit import functional as NF
from normkit.nn._base import ChannelAffineBase, NormBase, adds_options

__all__ = ["ChannelNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class GroupNorm(ChannelAffineBase):
    """Group normalization (Wu & He 2018, arXiv:1803.08494); twin of :class:`torch.nn.GroupNorm`.

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}}\\gamma_c + \\beta_c

    Independent of the batch size (the fix for small batches). channels_last inputs give
    channels_last outputs (torch.nn returns contiguous ones: pytorch#111824).

    >>> y = GroupNorm(8, 64)(torch.randn(2, 64, 16, 16))
    """

    weight: Tensor | None
    bias: Tensor | None

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        backend: str = "auto",
    ) -> None:
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide num_channels={num_channels}; pick a divisor "
                f"of {num_channels}"
            )
        super().__init__(num_channels, eps, affine, device, dtype, bias=bias, backend=backend)
        self.num_groups = num_groups

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        return NF.group_norm(
            input, self.num_groups, self.weight, self.bias, self.eps, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{self.num_groups}, " + super().extra_repr()


class _InstanceNorm(NormBase):
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016, arXiv:1607.08022).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    Same constructor (``bias=False`` included), defaults (``affine=False``,
    ``track_running_stats=False``) and buffers as the torch.nn twin; unbatched ``(C, *)`` inputs
    accepted.
    """

    _spatial_dims = 2

    @adds_options(NormBase, affine=False, track_running_stats=False)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

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
        # Version 1 dropped the running buffers of layers that do not track them (torch 0.4):
        # an unversioned checkpoint that still has them is reported and the keys are dropped.
        if local_metadata.get("version") is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                name = type(self).__name__
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {' and '.join(map(repr, keys))} for "
                    f"{name} with track_running_stats=False (a checkpoint saved before torch "
                    f"0.4.0?); remove these keys from the state_dict, or build {name} with "
                    "track_running_stats=True to use them"
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        name = type(self).__name__
        nd = self._spatial_dims
        if input.ndim not in (nd + 1, nd + 2):
            raise ValueError(
                f"{name} expects {nd + 1}D (unbatched) or {nd + 2}D (batched) input (got "
                f"{input.ndim}D input of shape {tuple(input.shape)})"
            )
        unbatched = input.ndim == nd + 1
        x = input.unsqueeze(0) if unbatched else input
        if x.shape[1] != self.num_features and (self.affine or self.track_running_stats):
            raise ValueError(
                f"{name}({self.num_features}) expects {self.num_features} channels on dim "
                f"{0 if unbatched else 1} (got shape {tuple(input.shape)})"
            )
        use_input_stats = self.training or not self.track_running_stats
        y = NF.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            nan_policy=self.nan_policy,
            backend=self.backend,
        )
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + (
        "\n    Input ``(N, C, L)`` or ``(C, L)``.\n\n"
        "    >>> y = InstanceNorm1d(8)(torch.randn(4, 8, 100))\n"
    )
    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + (
        "\n    Input ``(N, C, H, W)`` or ``(C, H, W)``.\n\n"
        "    >>> y = InstanceNorm2d(3, affine=True)(torch.randn(4, 3, 32, 32))\n"
    )
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + (
        "\n    Input ``(N, C, D, H, W)`` or ``(C, D, H, W)``.\n\n"
        "    >>> y = InstanceNorm3d(2)(torch.randn(1, 2, 8, 8, 8))\n"
    )
    _spatial_dims = 3


class ChannelNorm(ChannelAffineBase):
    """Channel normalization (Dai & Heckel 2019, arXiv:1907.09539).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    Each channel of each sample is centred and scaled by its own mean and variance over the
    positions, then a per-channel affine (on by default). No running statistics: train and eval
    compute the same thing. Any input ``(N, C, *)`` with at least one position dim.

    >>> y = ChannelNorm(16)(torch.randn(4, 16, 128))
    """

    weight: Tensor | None
    bias: Tensor | None
    _min_ndim = 3

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input, " and at least one position dim")
        return NF.channel_norm(input, self.weight, self.bias, self.eps, backend=self.backend)
