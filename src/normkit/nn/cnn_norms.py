"""The rest of the CNN norm zoo used by real models (timm): ``GlobalResponseNorm`` (ConvNeXt-V2),
``EvoNorm2dB0``/``EvoNorm2dS0``, ``FilterResponseNorm2d`` + ``TLU``, ``SplitBatchNorm2d`` (AdvProp).

Outputs and gradients equal timm's layers (same parameter and buffer names, so their
state_dicts load); statistics are computed in float32 for float16/bfloat16 inputs and
returned in the input dtype, as every normkit layer does. Batch-statistics updates
(``EvoNorm2dB0``) keep normkit's NaN guard (``nan_policy``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._stats import NanPolicy, accumulation_dtype, moments
from normkit.nn.batchnorm import BatchNorm2d

__all__ = [
    "TLU",
    "EvoNorm2dB0",
    "EvoNorm2dS0",
    "FilterResponseNorm2d",
    "GlobalResponseNorm",
    "SplitBatchNorm2d",
]

_C = (1, -1, 1, 1)  # a per-channel vector broadcast over (N, C, H, W)


def _check_4d(x: Tensor, layer: nn.Module, channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{type(layer).__name__}({channels}) expects (N, {channels}, H, W) input (got shape "
            f"{tuple(x.shape)}); pass a 4D channels-first tensor with {channels} channels"
        )


def _factory(device: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    return {"device": device, "dtype": dtype}


def _instance_std(x: Tensor, eps: float) -> Tensor:
    """sqrt(Var + eps) per sample and channel over H, W (biased), in x's dtype."""
    return moments(x, (2, 3), keepdim=True)[1].add(eps).sqrt().to(x.dtype)


class GlobalResponseNorm(nn.Module):
    """Global response normalization (Woo et al. 2023, ConvNeXt-V2, arXiv:2301.00808).

    .. math:: G_c = \\lVert x_{c} \\rVert_2, \\quad N_c = \\frac{G_c}{\\mathrm{mean}_c G_c + \\epsilon},
        \\quad y = x + \\gamma_c\\, (x\\, N_c) + \\beta_c

    with the L2 norm over the spatial positions of each sample and channel. ``channels_last``
    (default, timm's): the input is laid out ``(N, H, W, C)``; ``False``: ``(N, C, H, W)``.
    ``weight`` (γ) and ``bias`` (β) start at zero, so the layer starts as the identity.

    >>> grn = GlobalResponseNorm(64)
    >>> y = grn(torch.randn(2, 7, 7, 64))
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-6,
        channels_last: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.channels_last = channels_last
        self.weight = nn.Parameter(torch.zeros(dim, **_factory(device, dtype)))
        self.bias = nn.Parameter(torch.zeros(dim, **_factory(device, dtype)))

    def forward(self, x: Tensor) -> Tensor:
        c_axis = 3 if self.channels_last else 1
        if x.ndim != 4 or x.shape[c_axis] != self.dim:
            layout = "(N, H, W, C)" if self.channels_last else "(N, C, H, W)"
            raise ValueError(
                f"GlobalResponseNorm({self.dim}, channels_last={self.channels_last}) expects "
                f"{layout} input with C={self.dim} (got shape {tuple(x.shape)}); pass "
                "channels_last= matching your layout"
            )
        spatial = (1, 2) if self.channels_last else (2, 3)
        shape = (1, 1, 1, -1) if self.channels_last else _C
        xa = x.to(accumulation_dtype(x.dtype))
        g = torch.linalg.vector_norm(xa, dim=spatial, keepdim=True)
        n = (g / (g.mean(dim=c_axis, keepdim=True) + self.eps)).to(x.dtype)
        w, b = self.weight.view(shape).to(x.dtype), self.bias.view(shape).to(x.dtype)
        return x + torch.addcmul(b, w, x * n)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, channels_last={self.channels_last}"


class EvoNorm2dB0(nn.Module):
    """EvoNorm-B0 (Liu et al. 2020, arXiv:2004.02967): batch-dependent normalization and
    activation in one layer.

    .. math:: y = \\frac{x}{\\max\\big(\\sqrt{s^2_B + \\epsilon},\\; v\\,x + \\sqrt{s^2_{I}(x) + \\epsilon}\\big)}\\gamma + \\beta

    with ``s²_B`` the batch variance per channel (training; ``running_var`` in eval, updated
    with momentum and the unbiased variance as torch's BN) and ``s²_I`` the per-sample
    variance over H, W. ``apply_act=False`` drops the normalization (affine only), as timm.

    >>> y = EvoNorm2dB0(32)(torch.randn(4, 32, 8, 8))
    """

    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        apply_act: bool = True,
        momentum: float = 0.1,
        eps: float = 1e-3,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        nan_policy: NanPolicy = "skip",
    ) -> None:
        super().__init__()
        f = _factory(device, dtype)
        self.num_features = num_features
        self.apply_act = apply_act
        self.momentum = momentum
        self.eps = eps
        self.nan_policy: NanPolicy = nan_policy
        self.weight = nn.Parameter(torch.ones(num_features, **f))
        self.bias = nn.Parameter(torch.zeros(num_features, **f))
        self.v = nn.Parameter(torch.ones(num_features, **f)) if apply_act else None
        self.register_buffer("running_var", torch.ones(num_features, **f))

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``, ``v = 1``, ``running_var = 1``."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)
        self.running_var.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_features)
        if self.v is not None:
            if self.training and x.shape[0] > 0:  # an empty batch leaves running_var, as BN
                xa = x.to(accumulation_dtype(x.dtype))
                var = xa.var(dim=(0, 2, 3), unbiased=False)
                n = x.numel() // x.shape[1]
                if n < 2:
                    raise ValueError(
                        f"EvoNorm2dB0 in training mode needs more than one value per channel (got "
                        f"input of shape {tuple(x.shape)}); use eval mode or EvoNorm2dS0"
                    )
                NF.update_running_buffers(
                    torch.empty_like(self.running_var),
                    self.running_var,
                    torch.zeros_like(var),
                    var,
                    n,
                    self.momentum,
                    nan_policy=self.nan_policy,
                )
            else:
                var = self.running_var
            left = var.add(self.eps).sqrt().to(x.dtype).view(_C)
            right = x * self.v.to(x.dtype).view(_C) + _instance_std(x, self.eps)
            x = x / torch.maximum(left, right)
        return x * self.weight.to(x.dtype).view(_C) + self.bias.to(x.dtype).view(_C)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, apply_act={self.apply_act}, momentum={self.momentum}, "
            f"eps={self.eps}"
        )


class EvoNorm2dS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020, arXiv:2004.02967): batch-independent normalization and
    activation (a SiLU divided by a group standard deviation).

    .. math:: y = \\frac{x\\, \\sigma(v\\,x)}{\\sqrt{s^2_{G}(x) + \\epsilon}}\\gamma + \\beta

    with ``s²_G`` the per-sample variance over each group of channels and H, W (as GroupNorm).
    ``groups`` (or ``group_size``, which wins) must divide ``num_features``.
    ``apply_act=False`` drops the normalization (affine only), as timm.

    >>> y = EvoNorm2dS0(32, groups=8)(torch.randn(2, 32, 8, 8))
    """

    def __init__(
        self,
        num_features: int,
        groups: int = 32,
        group_size: int | None = None,
        apply_act: bool = True,
        eps: float = 1e-5,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if group_size:
            groups = num_features // group_size if num_features % group_size == 0 else 0
        if groups < 1 or num_features % groups:
            raise ValueError(
                f"EvoNorm2dS0: groups={groups} (group_size={group_size}) must divide "
                f"num_features={num_features}; pick a divisor of {num_features}"
            )
        f = _factory(device, dtype)
        self.num_features = num_features
        self.groups = groups
        self.apply_act = apply_act
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **f))
        self.bias = nn.Parameter(torch.zeros(num_features, **f))
        self.v = nn.Parameter(torch.ones(num_features, **f)) if apply_act else None

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``, ``v = 1``."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_features)
        if self.v is not None:
            n, c, h, w = x.shape
            xg = x.reshape(n, self.groups, c // self.groups, h, w)
            std = moments(xg, (2, 3, 4), keepdim=True)[1].add(self.eps).sqrt()
            std = std.to(x.dtype).expand(xg.shape).reshape(n, c, h, w)
            x = x * (x * self.v.to(x.dtype).view(_C)).sigmoid() / std
        return x * self.weight.to(x.dtype).view(_C) + self.bias.to(x.dtype).view(_C)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, groups={self.groups}, apply_act={self.apply_act}, eps={self.eps}"
        )


class FilterResponseNorm2d(nn.Module):
    """Filter response normalization with its thresholded linear unit (Singh & Krishnan 2020,
    arXiv:1911.09737).

    .. math:: \\nu^2 = \\mathrm{mean}_{H,W}(x^2), \\quad
        y = \\max\\Big(\\gamma\\frac{x}{\\sqrt{\\nu^2 + \\epsilon}} + \\beta,\\; \\tau\\Big)

    per sample and channel, no mean subtraction, no batch dependence. ``tlu=False`` leaves out
    the ``max(·, τ)`` (then pair it with :class:`TLU` or any activation). Parameters ``weight``
    (γ), ``bias`` (β), ``tau`` (τ): the state_dict of timm's ``FilterResponseNormTlu2d``.
    ``eps`` is 1e-6 as in the paper (timm uses 1e-5).

    >>> y = FilterResponseNorm2d(32)(torch.randn(2, 32, 8, 8))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        tlu: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"FilterResponseNorm2d: eps must be positive (got {eps})")
        f = _factory(device, dtype)
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **f))
        self.bias = nn.Parameter(torch.zeros(num_features, **f))
        self.tau = nn.Parameter(torch.zeros(num_features, **f)) if tlu else None

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_features)
        xa = x.to(accumulation_dtype(x.dtype))
        inv = xa.square().mean(dim=(2, 3), keepdim=True).add(self.eps).rsqrt().to(x.dtype)
        y = x * inv * self.weight.to(x.dtype).view(_C) + self.bias.to(x.dtype).view(_C)
        return y if self.tau is None else torch.maximum(y, self.tau.to(x.dtype).view(_C))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, tlu={self.tau is not None}"


class TLU(nn.Module):
    """Thresholded linear unit ``y = max(x, τ_c)`` with a learned per-channel ``tau``
    (Singh & Krishnan 2020, arXiv:1911.09737), the activation of filter response norm.

    >>> y = TLU(32)(torch.randn(2, 32, 8, 8))
    """

    def __init__(
        self, num_features: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.tau = nn.Parameter(torch.zeros(num_features, **_factory(device, dtype)))

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[1 if x.ndim > 1 else 0] = -1
        return torch.maximum(x, self.tau.to(x.dtype).view(shape))

    def extra_repr(self) -> str:
        return str(self.num_features)


class SplitBatchNorm2d(BatchNorm2d):
    """Split batch norm (Xie et al. 2020, AdvProp, arXiv:1911.09665; timm's ``SplitBatchNorm2d``).

    In training the batch is cut into ``num_splits`` equal parts: the first is normalized by
    this layer (clean examples), part ``i`` by the auxiliary batch norm ``aux_bn[i-1]``
    (e.g. adversarial examples), each with its own statistics. In eval only the main batch
    norm runs, so dropping ``aux_bn`` after training leaves a plain :class:`BatchNorm2d`. The
    state_dict is timm's (``weight``, ..., ``aux_bn.0.weight``, ...).

    >>> sbn = SplitBatchNorm2d(16, num_splits=2)
    >>> y = sbn(torch.randn(8, 16, 4, 4))       # samples 0-3 main BN, 4-7 the auxiliary one
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        num_splits: int = 2,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        if num_splits < 2:
            raise ValueError(
                f"SplitBatchNorm2d needs num_splits >= 2 (got {num_splits}); use BatchNorm2d "
                "for a single split"
            )
        args = (num_features, eps, momentum, affine, track_running_stats)
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        self.num_splits = num_splits
        self.aux_bn = nn.ModuleList(
            BatchNorm2d(*args, device=device, dtype=dtype, **kwargs) for _ in range(num_splits - 1)
        )

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training:
            return super().forward(input, mask)
        n = input.shape[0]
        if n % self.num_splits:
            raise ValueError(
                f"SplitBatchNorm2d(num_splits={self.num_splits}) in training needs a batch size "
                f"divisible by {self.num_splits} (got {n}); pad the batch or change num_splits"
            )
        parts = input.tensor_split(self.num_splits)  # num_splits parts, empty ones for N = 0
        masks = mask.tensor_split(self.num_splits) if mask is not None else [None] * len(parts)
        out = [super().forward(parts[0], masks[0])]
        out += [bn(p, m) for bn, p, m in zip(self.aux_bn, parts[1:], masks[1:], strict=True)]
        return torch.cat(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"
