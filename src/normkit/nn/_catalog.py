"""The catalog: ONE table of norm kinds, read by everything that asks "what norm is this?".

Each :class:`NormKind` row says, for one class (normkit's, torch.nn's, or another library's by
its ``"module.QualName"``): its family, its :func:`get_norm` names, its exact torch.nn twin
(which :func:`normkit.inference.convert` swaps it with), the twin whose constructor it extends,
its frozen twin (:func:`normkit.nn.freeze_batchnorm`), its synchronized twin
(:func:`normkit.nn.convert_sync_batchnorm`) and how :func:`normkit.inference.fold_batchnorm`
folds it. Those functions, the diagnostics' norm detection and ``normkit.inference.TWINS`` are
views of :data:`CATALOG`; adding a norm is adding one row.

The module is public as ``normkit.nn.catalog``. Usage (stable API)::

    >>> from torch import nn
    >>> from normkit.nn import BatchRenorm2d, GroupNorm, catalog
    >>> catalog.family(nn.BatchNorm2d(4)), catalog.family(GroupNorm(2, 4))
    ('batch', 'group')
    >>> catalog.is_norm(nn.Linear(2, 2))
    False
    >>> kind = catalog.lookup(nn.BatchNorm2d)
    >>> kind.frozen.__name__, kind.sync.__name__
    ('FrozenBatchNorm2d', 'SyncBatchNorm')
    >>> catalog.lookup(BatchRenorm2d).signature_twin is nn.BatchNorm2d
    True

:func:`lookup` takes a module or a class and finds the row of the class itself, of its
``"module.QualName"`` (libraries normkit does not import, e.g. timm, torchvision), or — unless
``exact=True`` — of the nearest catalogued base class (a user's subclass of
``torch.nn.BatchNorm2d`` is a batch norm). :func:`family` adds torch's conventions for classes
outside the catalog (a module with ``running_mean``, ``running_var``, ``momentum`` and
``num_batches_tracked`` is a batch norm; one with only the running buffers a frozen one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from torch import nn

from normkit.nn.attention import QKNorm, UnitNormalization
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.cnn_norms import (
    EvoNorm2dB0,
    EvoNorm2dS0,
    FilterResponseNorm2d,
    GlobalResponseNorm,
    SplitBatchNorm2d,
)
from normkit.nn.conditional import (
    AdaGroupNorm,
    AdaIN,
    AdaLayerNorm,
    AdaLNZero,
    ConditionalBatchNorm2d,
    FiLM,
)
from normkit.nn.dyt import DyT
from normkit.nn.frozen import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
)
from normkit.nn.ghost import GhostBatchNorm, GhostBatchNorm1d, GhostBatchNorm2d
from normkit.nn.groupnorm import (
    ChannelNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from normkit.nn.keras import BatchNormalization
from normkit.nn.layernorm import LayerNorm, LayerNorm2d, RMSNorm
from normkit.nn.lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from normkit.nn.localresponse import CrossMapLRN2d, LocalResponseNorm
from normkit.nn.normact import (
    BatchNormAct2d,
    FrozenBatchNormAct2d,
    GroupNormAct,
    LayerNormAct,
    SyncBatchNormAct2d,
)
from normkit.nn.renorm import BatchRenorm, BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from normkit.nn.residual import AddLayerNorm, AddRMSNorm
from normkit.nn.sync import SyncBatchNorm

__all__ = [
    "CATALOG",
    "Family",
    "Fold",
    "NormKind",
    "family",
    "get_norm",
    "is_norm",
    "lookup",
    "norm_names",
    "register_norm",
    "rows",
]

Family = Literal[
    "batch",  # batch statistics in training, running statistics in eval
    "frozen_batch",  # running statistics always (FrozenBatchNorm)
    "instance",  # per sample and channel, over positions
    "group",  # per sample and channel group
    "layer",  # per sample, over the trailing (or channel) dims
    "rms",  # per sample, root mean square only
    "local_response",  # across neighbouring channels (AlexNet's LRN)
    "other",  # any other normalization (DyT, FiLM, EvoNorm, FRN, a user's norm, ...)
]


def _no_activation(m: nn.Module) -> nn.Module | None:
    return None


def _act(m: nn.Module) -> nn.Module | None:
    """normkit's norm+activation layers: the ``act`` submodule."""
    act = getattr(m, "act", None)
    return act if isinstance(act, nn.Module) else None


def _timm_act(m: nn.Module) -> nn.Module | None:
    """timm's norm+activation layers: ``drop`` then ``act`` (identities left out)."""
    parts = [getattr(m, "drop", None), getattr(m, "act", None)]
    mods = [p for p in parts if isinstance(p, nn.Module) and not isinstance(p, nn.Identity)]
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods) if mods else None


def _axis_blocker(m: nn.Module) -> str | None:
    axis = getattr(m, "axis", 1)
    if axis != 1:
        return f"normalizes feature axis {axis}; torch.nn batch norms only normalize axis 1"
    return None


@dataclass(frozen=True)
class Fold:
    """How :func:`normkit.inference.fold_batchnorm` reads a norm: the batch-norm protocol
    (``running_mean``, ``running_var``, ``eps``, optional ``weight``/``bias``, ``axis``).

    ``frozen``: the running statistics normalize in training mode too; ``activation``: what
    stays in the model in the norm's place after folding (``None``: an identity).
    """

    frozen: bool = False
    activation: Callable[[nn.Module], nn.Module | None] = _no_activation


@dataclass(frozen=True)
class NormKind:
    """One row of the catalog.

    ``cls``: the class, or ``"module.QualName"`` of a class normkit does not import (``None``
    for a name-only row of :func:`register_norm`). ``names``: its :func:`get_norm` names, the
    first canonical; ``factory(num_features, **kw)`` builds it (default ``cls``).
    ``torch_twin``: the torch.nn class it is an exact drop-in for (same constructor, state_dict
    and outputs; :func:`normkit.inference.convert` swaps them); ``signature_twin``: the torch.nn
    class whose constructor it accepts, in order, before its keyword-only extras (default
    ``torch_twin``). ``frozen`` / ``sync``: what :func:`normkit.nn.freeze_batchnorm` /
    :func:`normkit.nn.convert_sync_batchnorm` put in its place; ``local``: its batch statistics
    are local by design, so convert_sync_batchnorm leaves it without a warning. ``fold``: how
    fold_batchnorm reads it (``None``: not foldable). ``convert_blocker``: why an instance has
    no exact torch.nn equivalent after all (e.g. ``axis=-1``), or ``None``.
    """

    cls: type[nn.Module] | str | None
    family: Family
    names: tuple[str, ...] = ()
    factory: Callable[..., nn.Module] | None = None
    torch_twin: type[nn.Module] | None = None
    signature_twin: type[nn.Module] | None = None
    frozen: type[nn.Module] | None = None
    sync: type[nn.Module] | None = None
    local: bool = False
    fold: Fold | None = None
    convert_blocker: Callable[[nn.Module], str | None] | None = None

    @property
    def qualname(self) -> str:
        """``"module.QualName"`` of the row's class."""
        if isinstance(self.cls, type):
            return f"{self.cls.__module__}.{self.cls.__qualname__}"
        return self.cls or ""

    @property
    def constructor_twin(self) -> type[nn.Module] | None:
        """The torch.nn class whose constructor this one accepts (``signature_twin`` or
        ``torch_twin``)."""
        return self.signature_twin or self.torch_twin

    def build(self, num_features: int, **kwargs: Any) -> nn.Module:
        """``factory(num_features, **kwargs)``."""
        make = self.factory or self.cls
        if not callable(make):
            raise TypeError(f"the catalog row of {self.qualname} has no factory")
        return make(num_features, **kwargs)


def _largest_group_count(num_features: int) -> int:
    return max(g for g in range(1, min(32, num_features) + 1) if num_features % g == 0)


def _grouped(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """``factory(num_features, num_groups=None, **kw)``: by default the largest divisor of
    ``num_features`` not above 32 groups."""

    def factory(num_features: int, num_groups: int | None = None, **kw: Any) -> nn.Module:
        groups = _largest_group_count(num_features) if num_groups is None else num_groups
        return cls(groups, num_features, **kw)

    factory.__name__ = f"{cls.__name__.lower()}_factory"
    return factory


def _keras_bn(num_features: int, **kwargs: Any) -> BatchNormalization:
    return BatchNormalization(num_features=num_features, **kwargs)


# The conditioning sizes of the conditional layers default to num_features, so that every name
# builds from num_features alone (ConditionalBatchNorm2d has no name: num_classes has no default).
def _ada_group_norm(
    num_features: int, embedding_dim: int | None = None, num_groups: int | None = None, **kw: Any
) -> AdaGroupNorm:
    groups = _largest_group_count(num_features) if num_groups is None else num_groups
    return AdaGroupNorm(embedding_dim or num_features, num_features, groups, **kw)


def _film(num_features: int, cond_dim: int | None = None, **kw: Any) -> FiLM:
    return FiLM(num_features, cond_dim or num_features, **kw)


def _evonorm_s0(num_features: int, groups: int | None = None, **kw: Any) -> EvoNorm2dS0:
    """EvoNorm-S0 with, by default, the largest divisor of ``num_features`` not above 32 groups."""
    if groups is None and kw.get("group_size") is None:
        groups = _largest_group_count(num_features)
    return EvoNorm2dS0(num_features, groups if groups is not None else 32, **kw)


def _unit_norm(num_features: int | None = None, **kw: Any) -> UnitNormalization:
    return UnitNormalization(**kw)


def _lazy(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """``factory(num_features, **kw)`` for a lazy layer: its features come from the first
    input, so ``num_features`` is not passed on (it would land in ``eps``)."""

    def factory(num_features: int | None = None, **kw: Any) -> nn.Module:
        return cls(**kw)

    factory.__name__ = f"{cls.__name__.lower()}_factory"
    return factory


_BN = Fold()
_FROZEN = Fold(frozen=True)

# fmt: off
CATALOG: list[NormKind] = [
    # ---- normkit's batch norms
    NormKind(BatchNorm, "batch", ("bn", "batchnorm"), signature_twin=nn.BatchNorm2d,
             frozen=FrozenBatchNorm, sync=SyncBatchNorm, fold=_BN),
    NormKind(BatchNorm1d, "batch", ("bn1d", "batchnorm1d"), torch_twin=nn.BatchNorm1d,
             frozen=FrozenBatchNorm1d, sync=SyncBatchNorm, fold=_BN,
             convert_blocker=_axis_blocker),
    NormKind(BatchNorm2d, "batch", ("bn2d", "batchnorm2d"), torch_twin=nn.BatchNorm2d,
             frozen=FrozenBatchNorm2d, sync=SyncBatchNorm, fold=_BN,
             convert_blocker=_axis_blocker),
    NormKind(BatchNorm3d, "batch", ("bn3d", "batchnorm3d"), torch_twin=nn.BatchNorm3d,
             frozen=FrozenBatchNorm3d, sync=SyncBatchNorm, fold=_BN,
             convert_blocker=_axis_blocker),
    NormKind(SyncBatchNorm, "batch", ("syncbn", "syncbatchnorm"), torch_twin=nn.SyncBatchNorm,
             frozen=FrozenBatchNorm, sync=SyncBatchNorm, fold=_BN, convert_blocker=_axis_blocker),
    NormKind(BatchRenorm, "batch", ("brn", "batchrenorm"), signature_twin=nn.BatchNorm2d,
             frozen=FrozenBatchNorm, fold=_BN),
    NormKind(BatchRenorm1d, "batch", ("brn1d", "batchrenorm1d"), signature_twin=nn.BatchNorm1d,
             frozen=FrozenBatchNorm1d, fold=_BN),
    NormKind(BatchRenorm2d, "batch", ("brn2d", "batchrenorm2d"), signature_twin=nn.BatchNorm2d,
             frozen=FrozenBatchNorm2d, fold=_BN),
    NormKind(BatchRenorm3d, "batch", ("brn3d", "batchrenorm3d"), signature_twin=nn.BatchNorm3d,
             frozen=FrozenBatchNorm3d, fold=_BN),
    NormKind(GhostBatchNorm, "batch", ("gbn", "ghostbatchnorm"), signature_twin=nn.BatchNorm2d,
             frozen=FrozenBatchNorm, local=True, fold=_BN),
    NormKind(GhostBatchNorm1d, "batch", ("gbn1d", "ghostbatchnorm1d"),
             signature_twin=nn.BatchNorm1d, frozen=FrozenBatchNorm1d, local=True, fold=_BN),
    NormKind(GhostBatchNorm2d, "batch", ("gbn2d", "ghostbatchnorm2d"),
             signature_twin=nn.BatchNorm2d, frozen=FrozenBatchNorm2d, local=True, fold=_BN),
    NormKind(BatchNormAct2d, "batch", ("bnact2d", "batchnormact2d"),
             signature_twin=nn.BatchNorm2d, frozen=FrozenBatchNormAct2d, sync=SyncBatchNormAct2d,
             fold=Fold(activation=_act)),
    NormKind(SyncBatchNormAct2d, "batch", ("syncbnact2d", "syncbatchnormact2d"),
             signature_twin=nn.SyncBatchNorm, frozen=FrozenBatchNormAct2d,
             sync=SyncBatchNormAct2d, fold=Fold(activation=_act)),
    NormKind(BatchNormalization, "batch", ("keras_bn", "batchnormalization"), factory=_keras_bn,
             frozen=FrozenBatchNorm, fold=_BN),
    NormKind(LazyBatchNorm1d, "batch", ("lazybn1d", "lazybatchnorm1d"),
             factory=_lazy(LazyBatchNorm1d), torch_twin=nn.LazyBatchNorm1d,
             frozen=FrozenBatchNorm1d, convert_blocker=_axis_blocker),
    NormKind(LazyBatchNorm2d, "batch", ("lazybn2d", "lazybatchnorm2d"),
             factory=_lazy(LazyBatchNorm2d), torch_twin=nn.LazyBatchNorm2d,
             frozen=FrozenBatchNorm2d, convert_blocker=_axis_blocker),
    NormKind(LazyBatchNorm3d, "batch", ("lazybn3d", "lazybatchnorm3d"),
             factory=_lazy(LazyBatchNorm3d), torch_twin=nn.LazyBatchNorm3d,
             frozen=FrozenBatchNorm3d, convert_blocker=_axis_blocker),
    NormKind(FrozenBatchNorm, "frozen_batch", ("frozenbn", "frozenbatchnorm"), fold=_FROZEN),
    NormKind(FrozenBatchNorm1d, "frozen_batch", ("frozenbn1d", "frozenbatchnorm1d"),
             fold=_FROZEN),
    NormKind(FrozenBatchNorm2d, "frozen_batch", ("frozenbn2d", "frozenbatchnorm2d"),
             fold=_FROZEN),
    NormKind(FrozenBatchNorm3d, "frozen_batch", ("frozenbn3d", "frozenbatchnorm3d"),
             fold=_FROZEN),
    NormKind(FrozenBatchNormAct2d, "frozen_batch", ("frozenbnact2d", "frozenbatchnormact2d"),
             fold=Fold(frozen=True, activation=_act)),
    # ---- normkit's per-sample norms
    NormKind(GroupNorm, "group", ("gn", "groupnorm"), factory=_grouped(GroupNorm),
             torch_twin=nn.GroupNorm),
    NormKind(GroupNormAct, "group", ("gnact", "groupnormact"), factory=_grouped(GroupNormAct),
             signature_twin=nn.GroupNorm),
    NormKind(InstanceNorm1d, "instance", ("in1d", "instancenorm1d"),
             torch_twin=nn.InstanceNorm1d),
    NormKind(InstanceNorm2d, "instance", ("in2d", "in", "instancenorm2d", "instancenorm"),
             torch_twin=nn.InstanceNorm2d),
    NormKind(InstanceNorm3d, "instance", ("in3d", "instancenorm3d"),
             torch_twin=nn.InstanceNorm3d),
    NormKind(LazyInstanceNorm1d, "instance", ("lazyin1d", "lazyinstancenorm1d"),
             factory=_lazy(LazyInstanceNorm1d), torch_twin=nn.LazyInstanceNorm1d),
    NormKind(LazyInstanceNorm2d, "instance", ("lazyin2d", "lazyinstancenorm2d"),
             factory=_lazy(LazyInstanceNorm2d), torch_twin=nn.LazyInstanceNorm2d),
    NormKind(LazyInstanceNorm3d, "instance", ("lazyin3d", "lazyinstancenorm3d"),
             factory=_lazy(LazyInstanceNorm3d), torch_twin=nn.LazyInstanceNorm3d),
    NormKind(ChannelNorm, "instance", ("cn", "channelnorm")),
    NormKind(LayerNorm, "layer", ("ln", "layernorm"), torch_twin=nn.LayerNorm),
    NormKind(LayerNormAct, "layer", ("lnact", "layernormact"), signature_twin=nn.LayerNorm),
    NormKind(AddLayerNorm, "layer", signature_twin=nn.LayerNorm),
    NormKind(LayerNorm2d, "layer", ("ln2d", "layernorm2d")),
    NormKind(RMSNorm, "rms", ("rms", "rmsnorm"), torch_twin=nn.RMSNorm),
    NormKind(AddRMSNorm, "rms", signature_twin=nn.RMSNorm),
    # ---- normkit's CNN, transformer and conditional norms
    # timm's constructor (num_splits is its sixth positional argument), not torch's
    NormKind(SplitBatchNorm2d, "batch", ("splitbn2d", "splitbatchnorm2d"),
             frozen=FrozenBatchNorm2d, fold=_BN),
    # divides by a batch/instance std without centring
    NormKind(EvoNorm2dB0, "other", ("evonorm_b0", "evonorm2db0")),
    NormKind(EvoNorm2dS0, "other", ("evonorm_s0", "evonorm2ds0"), factory=_evonorm_s0),
    NormKind(FilterResponseNorm2d, "other", ("frn", "filterresponsenorm2d")),  # no centring
    NormKind(GlobalResponseNorm, "other", ("grn", "globalresponsenorm")),
    NormKind(DyT, "other", ("dyt", "dynamictanh")),
    NormKind(AdaLayerNorm, "layer", ("adaln", "adalayernorm")),
    NormKind(AdaLNZero, "layer", ("adaln-zero", "adalnzero")),
    NormKind(AdaGroupNorm, "group", ("adagn", "adagroupnorm"), factory=_ada_group_norm),
    NormKind(ConditionalBatchNorm2d, "other"),  # its batch norm is the child ``bn``
    NormKind(AdaIN, "instance"),
    NormKind(FiLM, "other", ("film",), factory=_film),
    NormKind(QKNorm, "other", ("qknorm",)),
    NormKind(UnitNormalization, "other", ("unit", "l2", "unitnormalization"), factory=_unit_norm),
    NormKind(LocalResponseNorm, "local_response", ("lrn", "localresponsenorm"),
             torch_twin=nn.LocalResponseNorm),
    NormKind(CrossMapLRN2d, "local_response", ("crossmaplrn2d",),
             signature_twin=nn.CrossMapLRN2d),
    # ---- torch.nn
    NormKind(nn.BatchNorm1d, "batch", frozen=FrozenBatchNorm1d, sync=SyncBatchNorm, fold=_BN),
    NormKind(nn.BatchNorm2d, "batch", frozen=FrozenBatchNorm2d, sync=SyncBatchNorm, fold=_BN),
    NormKind(nn.BatchNorm3d, "batch", frozen=FrozenBatchNorm3d, sync=SyncBatchNorm, fold=_BN),
    NormKind(nn.SyncBatchNorm, "batch", frozen=FrozenBatchNorm, sync=SyncBatchNorm, fold=_BN),
    NormKind(nn.LazyBatchNorm1d, "batch", frozen=FrozenBatchNorm1d),
    NormKind(nn.LazyBatchNorm2d, "batch", frozen=FrozenBatchNorm2d),
    NormKind(nn.LazyBatchNorm3d, "batch", frozen=FrozenBatchNorm3d),
    NormKind(nn.InstanceNorm1d, "instance"),
    NormKind(nn.InstanceNorm2d, "instance"),
    NormKind(nn.InstanceNorm3d, "instance"),
    NormKind(nn.LazyInstanceNorm1d, "instance"),
    NormKind(nn.LazyInstanceNorm2d, "instance"),
    NormKind(nn.LazyInstanceNorm3d, "instance"),
    NormKind(nn.GroupNorm, "group"),
    NormKind(nn.LayerNorm, "layer"),
    NormKind(nn.RMSNorm, "rms"),
    NormKind(nn.LocalResponseNorm, "local_response"),
    NormKind(nn.CrossMapLRN2d, "local_response"),
    # ---- other libraries, by name (normkit does not import them)
    NormKind("torchvision.ops.misc.FrozenBatchNorm2d", "frozen_batch", fold=_FROZEN),
    NormKind("timm.layers.norm_act.BatchNormAct2d", "batch", frozen=FrozenBatchNorm2d,
             fold=Fold(activation=_timm_act)),
    NormKind("timm.layers.norm_act.SyncBatchNormAct", "batch", frozen=FrozenBatchNorm2d,
             fold=Fold(activation=_timm_act)),
    NormKind("timm.layers.norm_act.FrozenBatchNormAct2d", "frozen_batch",
             fold=Fold(frozen=True, activation=_timm_act)),
    NormKind("timm.layers.norm_act.FrozenBatchNorm2d", "frozen_batch", fold=_FROZEN),
    NormKind("timm.layers.norm.RmsNorm", "rms"),
    NormKind("timm.layers.norm.RmsNorm2d", "rms"),
]
# fmt: on
"""Every norm kind normkit knows; :func:`register_norm` appends users' rows."""


@cache
def _index() -> tuple[dict[str, NormKind], dict[str, NormKind]]:
    """Rows by ``"module.QualName"`` and by :func:`get_norm` name (rebuilt on registration)."""
    by_class: dict[str, NormKind] = {}
    by_name: dict[str, NormKind] = {}
    for row in CATALOG:
        if row.cls is not None:
            by_class.setdefault(row.qualname, row)
        for name in row.names:
            if by_name.setdefault(name.lower(), row) is not row:
                raise ValueError(f"two catalog rows are named {name!r}")
    return by_class, by_name


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup(module: nn.Module | type[nn.Module], *, exact: bool = False) -> NormKind | None:
    """The catalog row of ``module`` (an instance or a class), or ``None``.

    The class itself (or its ``"module.QualName"``) first; unless ``exact``, then the nearest
    catalogued base class along the MRO.
    """
    cls = module if isinstance(module, type) else type(module)
    by_class = _index()[0]
    for klass in cls.__mro__ if not exact else (cls,):
        row = by_class.get(_qualname(klass))
        if row is not None:
            return row
    return None


def family(module: nn.Module) -> Family | None:
    """The norm family of ``module``, or ``None`` for a module that is not a norm.

    Catalogued classes (and their subclasses) answer from the catalog; for other classes the
    torch conventions decide: ``running_mean``, ``running_var``, ``momentum`` and
    ``num_batches_tracked`` make a batch norm, the running buffers alone a frozen one, and a
    class name containing "norm" any other norm.
    """
    row = lookup(module)
    if row is not None:
        return row.family
    if all(hasattr(module, a) for a in ("running_mean", "running_var")):
        bn = all(hasattr(module, a) for a in ("momentum", "num_batches_tracked"))
        return "batch" if bn else "frozen_batch"
    if "norm" in type(module).__name__.lower():
        return "other"
    return None


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (:func:`family` is not ``None``)."""
    return family(module) is not None


def rows() -> Iterator[NormKind]:
    """Every row, in table order."""
    return iter(CATALOG)


# --------------------------------------------------------------------------- get_norm


def register_norm(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    aliases: tuple[str, ...] = (),
    family: Family = "other",
) -> None:
    """Make ``factory(num_features, **kw)`` reachable as ``get_norm(name, num_features, **kw)``.

    Adds a row to the catalog (a class as ``factory`` is also found by :func:`lookup`).
    A name already taken raises :class:`ValueError`.

    >>> register_norm("scaled_ln", lambda n, **kw: LayerNorm(n, eps=1e-6, **kw))  # doctest: +SKIP
    """
    taken = [n for n in (name, *aliases) if n.lower() in _index()[1]]
    if taken:
        raise ValueError(
            f"a norm named {taken[0]!r} is already registered; pick another name "
            f"(norm_names() lists the taken ones)"
        )
    cls = factory if isinstance(factory, type) else None
    CATALOG.append(NormKind(cls, family, (name, *aliases), factory=factory))
    _index.cache_clear()


def norm_names() -> list[str]:
    """Every name :func:`get_norm` accepts.

    >>> {"bn2d", "gn", "ln", "rms"} <= set(norm_names())
    True
    """
    return sorted(_index()[1])


def get_norm(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Build a norm layer by name for ``num_features`` features/channels.

    Names: ``bn`` (any axis), ``bn1d``/``bn2d``/``bn3d``, ``ln``, ``ln2d``, ``rms``, ``gn``,
    ``in1d``/``in2d``/``in3d``, ``cn`` (channel norm), the training-time family (``brn*``,
    ``gbn*``, ``frozenbn*``, ``syncbn``, ``bnact2d``, ``gnact``, ``lnact``, ``keras_bn``, ...),
    long aliases (``batchnorm2d``, ``layernorm``, ``groupnorm``, ...) and the names of
    :func:`register_norm`; :func:`norm_names` lists them. ``gn`` takes ``num_groups`` (default:
    the largest divisor of ``num_features`` not above 32).

    >>> get_norm("gn", 64)
    GroupNorm(32, 64, eps=1e-05, affine=True, bias=True)
    """
    row = _index()[1].get(name.lower())
    if row is None:
        raise ValueError(f"unknown norm {name!r}; expected one of {norm_names()}")
    return row.build(num_features, **kwargs)
