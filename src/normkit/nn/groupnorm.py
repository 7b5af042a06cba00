"""Per-sample norms over channel groups and positions: ``GroupNorm``, ``InstanceNorm*``,
``ChannelNorm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._stats import NanPolicy

__all__ = ["ChannelNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018, arXiv:1803.08494); twin of :class:`torch.nn.GroupNorm`.

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,g(c)}}{\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}}\\gamma_c + \\beta_c

    Independent of the batch size (the fix for small batches). channels_last inputs give
    channels_last outputs (torch.nn returns contiguous ones: pytorch#111824).

    >>> y = GroupNorm(8, 64)(torch.randn(2, 64, 16, 16))
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide num_channels={num_channels}; pick a divisor "
                f"of {num_channels}"
            )
        self.num_groups = num_groups
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

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``."""
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm expects input (N, {self.num_channels}, *) (got shape "
                f"{tuple(input.shape)}); num_channels must equal the input's dim 1"
            )
        return NF.group_norm(
            input, self.num_groups, self.weight, self.bias, self.eps, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _InstanceNorm(nn.Module):
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016, arXiv:1607.08022).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    Same constructor, defaults (``affine=False``, ``track_running_stats=False``) and buffers as
    the torch.nn twin; unbatched ``(C, *)`` inputs accepted.
    """

    _spatial_dims = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.nan_policy: NanPolicy = nan_policy
        self.backend = backend
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

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

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


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


class ChannelNorm(nn.Module):
    """Channel normalization (Dai & Heckel 2019, arXiv:1908.10196).

    .. math:: y_{n,c} = \\frac{x_{n,c} - \\mu_{n,c}}{\\sqrt{\\sigma^2_{n,c} + \\epsilon}}\\gamma_c + \\beta_c

    Each channel of each sample is centred and scaled by its own mean and variance over the
    positions, then a per-channel affine (on by default). No running statistics: train and eval
    compute the same thing. Any input ``(N, C, *)`` with at least one position dim.

    >>> y = ChannelNorm(16)(torch.randn(4, 16, 128))
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
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
        if input.ndim < 3 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"ChannelNorm({self.num_channels}) expects input (N, {self.num_channels}, L, ...) "
                f"with at least one position dim (got shape {tuple(input.shape)})"
            )
        return NF.channel_norm(input, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
