"""Norm + activation layers (timm's idea): ``BatchNormAct2d``, ``GroupNormAct``, ``LayerNormAct``,
and ``FrozenBatchNormAct2d``. Each is its plain norm followed by an activation, with the plain
norm's state_dict (so they load plain-norm weights)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit._stats import NanPolicy
from normkit.nn.batchnorm import BatchNorm2d
from normkit.nn.frozen import FROZEN_TWINS, FrozenBatchNorm, FrozenBatchNorm2d
from normkit.nn.groupnorm import GroupNorm
from normkit.nn.layernorm import LayerNorm
from normkit.nn.registry import register_norm
from normkit.nn.sync import SYNC_TWINS, SyncBatchNorm

__all__ = [
    "Activation",
    "BatchNormAct2d",
    "FrozenBatchNormAct2d",
    "GroupNormAct",
    "LayerNormAct",
    "SyncBatchNormAct2d",
    "make_activation",
]

Activation = str | Callable[[Tensor], Tensor] | nn.Module | None

_ACTS: dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(),
    "silu": lambda inplace: nn.SiLU(inplace=inplace),
    "swish": lambda inplace: nn.SiLU(inplace=inplace),
    "identity": lambda inplace: nn.Identity(),
}


class _Lambda(nn.Module):
    """A parameter-free module around a plain callable activation."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def make_activation(act: Activation, *, inplace: bool = False) -> nn.Module:
    """An activation module from ``"relu" | "gelu" | "silu" | "identity"``, ``None`` (identity),
    an ``nn.Module`` (used as is) or a callable ``Tensor -> Tensor``.

    ``inplace`` applies to ``relu``/``silu`` (GELU has no in-place form).

    >>> make_activation("silu", inplace=True)
    SiLU(inplace=True)
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        try:
            return _ACTS[act.lower()](inplace)
        except KeyError:
            raise ValueError(
                f"unknown activation {act!r}; expected one of {sorted(_ACTS)}, an nn.Module or a "
                "callable"
            ) from None
    if callable(act):
        return _Lambda(act)
    raise TypeError(f"act must be a string, nn.Module or callable (got {type(act).__name__})")


class BatchNormAct2d(BatchNorm2d):
    """:class:`normkit.nn.BatchNorm2d` followed by an activation — the "BN between the conv and
    the ReLU" of Ioffe & Szegedy 2015 as one layer (timm's ``BatchNormAct2d``).

    .. math:: y = \\mathrm{act}\\Big(\\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} \\gamma + \\beta\\Big)

    Keyword-only ``act`` (``"relu"`` default, ``"gelu"``, ``"silu"``, ``"identity"``, a module or
    a callable) and ``inplace``; the rest as :class:`normkit.nn.BatchNorm2d`. For a
    parameter-free activation the state_dict is exactly BatchNorm2d's, so ``torch.nn.BatchNorm2d``
    weights load.

    >>> layer = BatchNormAct2d(64, act="silu", inplace=True)
    >>> y = layer(torch.randn(8, 64, 16, 16))
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
        act: Activation = "relu",
        inplace: bool = False,
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            axis=axis,
            nan_policy=nan_policy,
            backend=backend,
        )
        self.act = make_activation(act, inplace=inplace)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.act(super().forward(input, mask))


class GroupNormAct(GroupNorm):
    """:class:`normkit.nn.GroupNorm` followed by an activation (timm's ``GroupNormAct``).

    .. math:: y = \\mathrm{act}\\big(\\mathrm{GN}(x)\\big)

    Keyword-only ``act`` and ``inplace`` as :class:`BatchNormAct2d`; state_dict of GroupNorm.

    >>> y = GroupNormAct(8, 64, act="gelu")(torch.randn(2, 64, 16, 16))
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
        act: Activation = "relu",
        inplace: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, backend=backend)
        self.act = make_activation(act, inplace=inplace)

    def forward(self, input: Tensor) -> Tensor:
        return self.act(super().forward(input))


class LayerNormAct(LayerNorm):
    """:class:`normkit.nn.LayerNorm` followed by an activation (timm's ``LayerNormAct``).

    .. math:: y = \\mathrm{act}\\big(\\mathrm{LN}(x)\\big)

    Keyword-only ``act`` and ``inplace`` as :class:`BatchNormAct2d`; state_dict of LayerNorm;
    ``forward(x, mask=None)`` as LayerNorm's.

    >>> y = LayerNormAct(256, act="gelu")(torch.randn(4, 10, 256))
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        act: Activation = "relu",
        inplace: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, bias, device, dtype, backend=backend
        )
        self.act = make_activation(act, inplace=inplace)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.act(super().forward(input, mask))


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """:class:`normkit.nn.FrozenBatchNorm2d` followed by an activation (timm's
    ``FrozenBatchNormAct2d``); what :func:`normkit.nn.freeze_batchnorm` makes of a
    :class:`BatchNormAct2d`.

    >>> y = FrozenBatchNormAct2d(8, act="relu")(torch.randn(1, 8, 4, 4))
    """

    _unfrozen_cls = BatchNormAct2d

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        act: Activation = "relu",
        inplace: bool = False,
        requires_grad: bool = False,
        axis: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            device,
            dtype,
            requires_grad=requires_grad,
            axis=axis,
            backend=backend,
        )
        self.act = make_activation(act, inplace=inplace)

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, *, requires_grad: bool = False) -> FrozenBatchNorm:
        frozen = super().from_batchnorm(bn, requires_grad=requires_grad)
        act = getattr(bn, "act", None)
        if isinstance(act, nn.Module):
            frozen.act = act
        return frozen

    def _build_unfrozen(self) -> nn.Module:
        bn = super()._build_unfrozen()
        bn.act = self.act
        return bn

    def forward(self, input: Tensor) -> Tensor:
        return self.act(super().forward(input))


FROZEN_TWINS[BatchNormAct2d] = FrozenBatchNormAct2d


class SyncBatchNormAct2d(SyncBatchNorm):
    """:class:`normkit.nn.SyncBatchNorm` followed by an activation (timm's ``SyncBatchNormAct``);
    what :func:`normkit.nn.convert_sync_batchnorm` makes of a :class:`BatchNormAct2d`.

    >>> y = SyncBatchNormAct2d(8, act="relu")(torch.randn(2, 8, 4, 4))  # doctest: +SKIP
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        act: Activation = "relu",
        inplace: bool = False,
        strict: bool = False,
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            process_group,
            device,
            dtype,
            strict=strict,
            axis=axis,
            nan_policy=nan_policy,
            backend=backend,
        )
        self.act = make_activation(act, inplace=inplace)

    @staticmethod
    def twin_kwargs(module: nn.Module) -> dict[str, Any]:
        """Constructor options taken from the layer being converted (its activation)."""
        return {"act": module.act}

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.act(super().forward(input, mask))


SYNC_TWINS[BatchNormAct2d] = SyncBatchNormAct2d
register_norm("bnact2d", BatchNormAct2d, aliases=("batchnormact2d",))
register_norm("frozenbnact2d", FrozenBatchNormAct2d, aliases=("frozenbatchnormact2d",))
register_norm("syncbnact2d", SyncBatchNormAct2d, aliases=("syncbatchnormact2d",))
register_norm("lnact", LayerNormAct, aliases=("layernormact",))


def _group_norm_act(num_features: int, num_groups: int | None = None, **kw: Any) -> GroupNormAct:
    if num_groups is None:
        num_groups = max(g for g in range(1, min(32, num_features) + 1) if num_features % g == 0)
    return GroupNormAct(num_groups, num_features, **kw)


register_norm("gnact", _group_norm_act, aliases=("groupnormact",))
