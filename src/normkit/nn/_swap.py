"""Model-wide layer swaps read off the catalog: ``freeze_batchnorm``, ``unfreeze_batchnorm``,
``convert_sync_batchnorm``."""

from __future__ import annotations

import warnings
from typing import Any, cast

from torch import Tensor, nn

from normkit.nn import _catalog as catalog
from normkit.nn.frozen import FrozenBatchNorm
from normkit.nn.sync import SyncBatchNorm

__all__ = ["convert_sync_batchnorm", "freeze_batchnorm", "unfreeze_batchnorm"]


def _frozen_class(m: nn.Module) -> type[FrozenBatchNorm] | None:
    """The frozen twin of ``m``: that of the nearest catalogued class along the MRO; the
    any-rank FrozenBatchNorm for a batch norm outside the catalog; ``None`` for a catalogued
    batch norm without one (its children are frozen instead)."""
    if catalog.family(m) != "batch":
        return None
    for klass in type(m).__mro__:
        row = catalog.lookup(klass, exact=True)
        if row is not None and row.frozen is not None:
            return row.frozen  # type: ignore[return-value]
    return FrozenBatchNorm if catalog.lookup(m) is None else None


def freeze_batchnorm(model: nn.Module, *, requires_grad: bool = False) -> nn.Module:
    """Replace every batch-norm layer of ``model`` by a :class:`FrozenBatchNorm` (in place).

    Converts every layer of the catalog's ``"batch"`` family to its frozen twin:
    ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and every normkit batch norm
    (``BatchNorm*``, ``BatchRenorm*``, ``GhostBatchNorm*``, ``SyncBatchNorm``,
    ``BatchNormAct2d`` → ``FrozenBatchNormAct2d``, Keras-style ``BatchNormalization``), keeping
    weights and running statistics, so the model behaves as in eval mode in every mode.
    ``requires_grad=True`` leaves the affine ``weight``/``bias`` trainable. Returns ``model``
    (or the frozen layer when ``model`` itself is a batch norm). :func:`unfreeze_batchnorm`
    undoes it. A batch norm without running statistics raises :class:`ValueError`.

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    >>> model = freeze_batchnorm(model)
    >>> type(model[1]).__name__
    'FrozenBatchNorm2d'
    """
    frozen_class = _frozen_class(model)
    if frozen_class is not None:
        frozen = frozen_class.from_batchnorm(model, requires_grad=requires_grad)
        frozen.train(model.training)
        frozen.__dict__["_source_module"] = model  # not a submodule: kept out of state_dict
        return frozen
    for name, child in model.named_children():
        new = freeze_batchnorm(child, requires_grad=requires_grad)
        if new is not child:
            setattr(model, name, new)
    return model


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm`: every frozen layer becomes a trainable batch norm again.

    A layer frozen by :func:`freeze_batchnorm` gets its original class and options back (with
    ``num_batches_tracked``); one built directly becomes a normkit ``BatchNorm*`` of the same
    rank (see :meth:`FrozenBatchNorm.to_batchnorm`). Current weights and statistics are kept.
    Returns ``model`` (or the new layer).

    >>> model = unfreeze_batchnorm(freeze_batchnorm(nn.Sequential(nn.BatchNorm1d(4))))
    >>> type(model[0]).__name__
    'BatchNorm1d'
    """
    if isinstance(model, FrozenBatchNorm):
        return model.to_batchnorm()
    for name, child in model.named_children():
        new = unfreeze_batchnorm(child)
        if new is not child:
            setattr(model, name, new)
    return model


def _to_sync(module: nn.Module, target: type[SyncBatchNorm], process_group: Any, strict: bool):
    """``target`` holding ``module``'s very ``Parameter`` and buffer objects."""
    rm = getattr(module, "running_mean", None)
    ref = rm if rm is not None else getattr(module, "weight", None)
    new = target(
        module.num_features,  # type: ignore[arg-type]
        module.eps,  # type: ignore[arg-type]
        module.momentum,  # type: ignore[arg-type]
        module.affine,  # type: ignore[arg-type]
        module.track_running_stats,  # type: ignore[arg-type]
        process_group,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
        bias=getattr(module, "bias", None) is not None or not module.affine,
        strict=strict,
        axis=getattr(module, "axis", 1),
        nan_policy=getattr(module, "nan_policy", "skip"),
        backend=getattr(module, "backend", "auto"),
        **target.twin_kwargs(module),
    )
    if module.affine:
        new.weight = cast(Tensor, module.weight)
        new.bias = cast(Tensor | None, module.bias)
    if module.track_running_stats:
        new.running_mean = cast(Tensor, module.running_mean)
        new.running_var = cast(Tensor, module.running_var)
        new.num_batches_tracked = cast(Tensor, module.num_batches_tracked)
    new.train(module.training)
    return new


def convert_sync_batchnorm(
    module: nn.Module, process_group: Any = None, *, strict: bool = False
) -> nn.Module:
    """Replace every batch norm of ``module`` by a :class:`SyncBatchNorm` (in place).

    Converts the classes whose catalog row names a synchronized twin: ``torch.nn.BatchNorm1d/
    2d/3d``, ``torch.nn.SyncBatchNorm``, normkit's ``BatchNorm``/``BatchNorm1d/2d/3d``/
    ``SyncBatchNorm`` and ``BatchNormAct2d`` (→ ``SyncBatchNormAct2d``). The same
    ``Parameter`` and buffer objects are reused, so an optimizer built before still works.
    ``GhostBatchNorm`` (local by design) and ``FrozenBatchNorm`` (no batch statistics) are left
    as they are; other batch norms (``BatchRenorm``, the Keras-style ``BatchNormalization``,
    subclasses) are left local with a warning. Returns ``module`` (or the new layer when
    ``module`` itself is a batch norm).

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    >>> type(convert_sync_batchnorm(model)[1]).__name__
    'SyncBatchNorm'
    """
    row = catalog.lookup(module, exact=True)
    if row is not None and row.sync is not None:
        return _to_sync(module, row.sync, process_group, strict)  # type: ignore[arg-type]
    if catalog.family(module) == "batch":
        if row is None or not row.local:
            warnings.warn(
                f"convert_sync_batchnorm: {type(module).__name__} has no synchronized version "
                "and stays local to each process",
                RuntimeWarning,
                stacklevel=2,
            )
        return module
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group, strict=strict)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
