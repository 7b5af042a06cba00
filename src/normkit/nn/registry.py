"""One string registry of norm layers: ``get_norm("gn", 64)`` instead of parallel lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from normkit.nn.attention import QKNorm, UnitNormalization
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.conditional import (
    AdaGroupNorm,
    AdaLayerNorm,
    AdaLNZero,
    FiLM,
)
from normkit.nn.dyt import DyT
from normkit.nn.groupnorm import (
    ChannelNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from normkit.nn.layernorm import LayerNorm, LayerNorm2d, RMSNorm

__all__ = ["get_norm", "norm_names", "register_norm"]

NormFactory = Callable[..., nn.Module]
_NORMS: dict[str, NormFactory] = {}


def register_norm(name: str, factory: NormFactory, *, aliases: tuple[str, ...] = ()) -> None:
    """Make ``factory(num_features, **kw)`` reachable as ``get_norm(name, num_features, **kw)``."""
    for key in (name, *aliases):
        key = key.lower()
        if key in _NORMS and _NORMS[key] is not factory:
            raise ValueError(f"a norm named {key!r} is already registered")
        _NORMS[key] = factory


def norm_names() -> list[str]:
    """Every name :func:`get_norm` accepts."""
    return sorted(_NORMS)


def get_norm(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Build a norm layer by name for ``num_features`` features/channels.

    Names: ``bn`` (any axis), ``bn1d``/``bn2d``/``bn3d``, ``ln``, ``ln2d``, ``rms``, ``gn``,
    ``in1d``/``in2d``/``in3d``, ``cn`` (channel norm), plus long aliases (``batchnorm2d``,
    ``layernorm``, ``groupnorm``, ...) and whatever later modules register. ``gn`` takes
    ``num_groups`` (default: the largest divisor of ``num_features`` not above 32).

    >>> get_norm("gn", 64)
    GroupNorm(32, 64, eps=1e-05, affine=True)
    """
    try:
        factory = _NORMS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; expected one of {norm_names()}") from None
    return factory(num_features, **kwargs)


def _group_norm(num_features: int, num_groups: int | None = None, **kw: Any) -> GroupNorm:
    if num_groups is None:
        num_groups = max(g for g in range(1, min(32, num_features) + 1) if num_features % g == 0)
    return GroupNorm(num_groups, num_features, **kw)


register_norm("bn", BatchNorm, aliases=("batchnorm",))
register_norm("bn1d", BatchNorm1d, aliases=("batchnorm1d",))
register_norm("bn2d", BatchNorm2d, aliases=("batchnorm2d",))
register_norm("bn3d", BatchNorm3d, aliases=("batchnorm3d",))
register_norm("ln", LayerNorm, aliases=("layernorm",))
register_norm("ln2d", LayerNorm2d, aliases=("layernorm2d",))
register_norm("rms", RMSNorm, aliases=("rmsnorm",))
register_norm("gn", _group_norm, aliases=("groupnorm",))
register_norm("in1d", InstanceNorm1d, aliases=("instancenorm1d",))
register_norm("in2d", InstanceNorm2d, aliases=("in", "instancenorm2d", "instancenorm"))
register_norm("in3d", InstanceNorm3d, aliases=("instancenorm3d",))
register_norm("cn", ChannelNorm, aliases=("channelnorm",))


# transformer and diffusion layers (the conditional ones take their conditioning sizes as kwargs)
# sizes of the conditioning default to num_features; ConditionalBatchNorm2d has no name here
# (it needs num_classes, which has no sensible default)
def _ada_group_norm(
    num_features: int,
    embedding_dim: int | None = None,
    num_groups: int | None = None,
    **kw: Any,
) -> AdaGroupNorm:
    groups = _group_norm(num_features, num_groups).num_groups
    return AdaGroupNorm(embedding_dim or num_features, num_features, groups, **kw)


def _film(num_features: int, cond_dim: int | None = None, **kw: Any) -> FiLM:
    return FiLM(num_features, cond_dim or num_features, **kw)


def _unit_norm(num_features: int | None = None, **kw: Any) -> UnitNormalization:
    return UnitNormalization(**kw)


register_norm("dyt", DyT, aliases=("dynamictanh",))
register_norm("adaln", AdaLayerNorm, aliases=("adalayernorm",))
register_norm("adaln-zero", AdaLNZero, aliases=("adalnzero",))
register_norm("adagn", _ada_group_norm, aliases=("adagroupnorm",))
register_norm("film", _film)
register_norm("qknorm", QKNorm)
register_norm("unit", _unit_norm, aliases=("l2", "unitnormalization"))
