"""Norm + activation layers (timm's idea): ``BatchNormAct2d``, ``GroupNormAct``, ``LayerNormAct``,
``FrozenBatchNormAct2d`` and ``SyncBatchNormAct2d``. Each is its plain norm followed by an
activation (:class:`normkit.nn._base.ActivationMixin`), with the plain norm's state_dict (so they
load plain-norm weights)."""

from __future__ import annotations

from typing import Any

from torch import nn

from normkit.nn._base import Activation, ActivationMixin, adds_options, make_activation
from normkit.nn.batchnorm import BatchNorm2d
from normkit.nn.frozen import FrozenBatchNorm, FrozenBatchNorm2d
from normkit.nn.groupnorm import GroupNorm
from normkit.nn.layernorm import LayerNorm
from normkit.nn.sync import SyncBatchNorm

__all__ = [
    "Activation",
    "BatchNormAct2d",
    "FrozenBatchNormAct2d",
    "GroupNormAct",
    "LayerNormAct",
    "SyncBatchNormAct2d",
    "make_activation",
]


class BatchNormAct2d(ActivationMixin, BatchNorm2d):
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

    @adds_options(BatchNorm2d)
    def __init__(
        self, *args: Any, act: Activation = "relu", inplace: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.set_activation(act, inplace)


class GroupNormAct(ActivationMixin, GroupNorm):
    """:class:`normkit.nn.GroupNorm` followed by an activation (timm's ``GroupNormAct``).

    .. math:: y = \\mathrm{act}\\big(\\mathrm{GN}(x)\\big)

    Keyword-only ``act`` and ``inplace`` as :class:`BatchNormAct2d`; state_dict of GroupNorm.

    >>> y = GroupNormAct(8, 64, act="gelu")(torch.randn(2, 64, 16, 16))
    """

    @adds_options(GroupNorm)
    def __init__(
        self, *args: Any, act: Activation = "relu", inplace: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.set_activation(act, inplace)


class LayerNormAct(ActivationMixin, LayerNorm):
    """:class:`normkit.nn.LayerNorm` followed by an activation (timm's ``LayerNormAct``).

    .. math:: y = \\mathrm{act}\\big(\\mathrm{LN}(x)\\big)

    Keyword-only ``act`` and ``inplace`` as :class:`BatchNormAct2d`; state_dict of LayerNorm;
    ``forward(x, mask=None)`` as LayerNorm's.

    >>> y = LayerNormAct(256, act="gelu")(torch.randn(4, 10, 256))
    """

    @adds_options(LayerNorm)
    def __init__(
        self, *args: Any, act: Activation = "relu", inplace: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.set_activation(act, inplace)


class FrozenBatchNormAct2d(ActivationMixin, FrozenBatchNorm2d):
    """:class:`normkit.nn.FrozenBatchNorm2d` followed by an activation (timm's
    ``FrozenBatchNormAct2d``); what :func:`normkit.nn.freeze_batchnorm` makes of a
    :class:`BatchNormAct2d`.

    >>> y = FrozenBatchNormAct2d(8, act="relu")(torch.randn(1, 8, 4, 4))
    """

    _unfrozen_cls = BatchNormAct2d

    @adds_options(FrozenBatchNorm2d)
    def __init__(
        self, *args: Any, act: Activation = "relu", inplace: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.set_activation(act, inplace)

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


class SyncBatchNormAct2d(ActivationMixin, SyncBatchNorm):
    """:class:`normkit.nn.SyncBatchNorm` followed by an activation (timm's ``SyncBatchNormAct``);
    what :func:`normkit.nn.convert_sync_batchnorm` makes of a :class:`BatchNormAct2d`.

    >>> y = SyncBatchNormAct2d(8, act="relu")(torch.randn(2, 8, 4, 4))  # doctest: +SKIP
    """

    @adds_options(SyncBatchNorm)
    def __init__(
        self, *args: Any, act: Activation = "relu", inplace: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.set_activation(act, inplace)

    @staticmethod
    def twin_kwargs(module: nn.Module) -> dict[str, Any]:
        """Constructor options taken from the layer being converted (its activation)."""
        return {"act": module.act}
