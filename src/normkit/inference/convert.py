"""Swap every norm layer of a model for its twin: ``torch.nn`` ⇄ ``normkit.nn``.

The catalog (:mod:`normkit.nn.catalog`) pairs each torch.nn norm with its normkit twin
(:data:`TWINS` is that view); the constructor arguments both share are read off the module by
the names of torch's signature; conversion builds the twin with those arguments on the same
device and dtype, loads the state_dict (strict: every parameter and buffer carries over), copies
``requires_grad`` and the training flag, and puts it where the original was (shared modules stay
shared). Only exact types convert: subclasses (FrozenBatchNorm, BatchRenorm, …) behave differently
and are left alone.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from normkit.nn import catalog

__all__ = ["TWINS", "ConversionReport", "Converted", "Twin", "convert"]


def _shared_args(m: nn.Module, torch_cls: type[nn.Module]) -> dict[str, Any]:
    """The constructor arguments of ``torch_cls`` read off ``m`` (either twin): each argument
    is the attribute of the same name, ``bias`` whether a bias exists (or none could)."""
    args: dict[str, Any] = {}
    for name in inspect.signature(torch_cls.__init__).parameters:
        if name in ("self", "device", "dtype"):
            continue
        if name == "bias":
            args[name] = getattr(m, "bias", None) is not None or getattr(m, "weight", None) is None
        elif name == "normalized_shape":
            args[name] = tuple(m.normalized_shape)  # type: ignore[arg-type]
        else:
            args[name] = getattr(m, name)
    return args


def _no_blocker(m: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class Twin:
    """A torch.nn norm, its normkit twin, the shared constructor arguments read off an instance,
    and (optionally) why a given normkit instance has no exact torch.nn equivalent."""

    torch_cls: type[nn.Module]
    normkit_cls: type[nn.Module]
    args: Callable[[nn.Module], dict[str, Any]]
    to_torch_blocker: Callable[[nn.Module], str | None] = _no_blocker


TWINS: tuple[Twin, ...] = tuple(
    Twin(
        row.torch_twin,
        row.cls,
        functools.partial(_shared_args, torch_cls=row.torch_twin),
        row.convert_blocker or _no_blocker,
    )
    for row in catalog.rows()
    if row.torch_twin is not None and isinstance(row.cls, type)
)
"""Every normkit layer with an exact torch.nn counterpart: a view of the catalog's
``torch_twin`` column (:mod:`normkit.nn.catalog`)."""

_BY_TORCH = {t.torch_cls: t for t in TWINS}
_BY_NORMKIT = {t.normkit_cls: t for t in TWINS}


@dataclass(frozen=True)
class Converted:
    """One converted module: its qualified name(s) and the classes before/after."""

    name: str
    source: str
    target: str


@dataclass
class ConversionReport:
    """``converted`` modules and ``skipped`` ones (name → reason) of a :func:`convert` call."""

    to: str
    converted: list[Converted] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} module(s) to {self.to}"]
        lines += [f"  {c.name}: {c.source} -> {c.target}" for c in self.converted]
        lines += [f"  kept {n}: {why}" for n, why in self.skipped.items()]
        return "\n".join(lines)


def _factory_of(m: nn.Module) -> dict[str, Any]:
    for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
        if is_lazy(t) or t.is_floating_point():  # a lazy layer's uninitialized tensors too
            return {"device": t.device, "dtype": t.dtype}
    return {}


def _convert_one(m: nn.Module, twin: Twin, to: str, backend: str | None) -> nn.Module:
    cls = twin.normkit_cls if to == "normkit" else twin.torch_cls
    kwargs = {**twin.args(m), **_factory_of(m)}
    if to == "normkit" and backend is not None:
        kwargs["backend"] = backend
    new = cls(**kwargs)
    new.load_state_dict(m.state_dict(), strict=True)
    for (_, p_old), (_, p_new) in zip(
        m.named_parameters(recurse=False), new.named_parameters(recurse=False), strict=True
    ):
        if not is_lazy(p_new):  # uninitialized parameters take no calls
            p_new.requires_grad_(p_old.requires_grad)
    # buffers keep their own device (e.g. a long num_batches_tracked created on the device)
    for name, b in m.named_buffers(recurse=False):
        nb = getattr(new, name)
        if nb is not None and not is_lazy(nb) and nb.device != b.device:
            setattr(new, name, nb.to(b.device))
    new.train(m.training)
    return new


@overload
def convert(
    model: nn.Module,
    to: Literal["normkit", "torch"] = ...,
    *,
    backend: str | None = ...,
    inplace: bool = ...,
    return_report: Literal[False] = ...,
) -> nn.Module: ...
@overload
def convert(
    model: nn.Module,
    to: Literal["normkit", "torch"] = ...,
    *,
    backend: str | None = ...,
    inplace: bool = ...,
    return_report: Literal[True],
) -> tuple[nn.Module, ConversionReport]: ...
def convert(
    model: nn.Module,
    to: Literal["normkit", "torch"] = "normkit",
    *,
    backend: str | None = None,
    inplace: bool = False,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Replace every norm layer by its twin from the other library.

    Covers BatchNorm1d/2d/3d, LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d and
    SyncBatchNorm (with its ``process_group``) both ways (the :data:`TWINS` table), keeping weights, buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``), device, dtype, ``requires_grad`` and the training flag, so
    ``convert(convert(m, "normkit"), "torch")`` has the same state_dict as ``m``. Layers without
    an exact twin (e.g. ``normkit.nn.BatchNorm(axis=-1)``, ``LayerNorm2d``, subclasses) are left
    alone and listed in the report. normkit layers use their own defaults for normkit-only
    options (``nan_policy="skip"``: a NaN batch does not poison the running stats in training).

    Args:
        model: any ``nn.Module`` (a norm layer itself is converted too).
        to: ``"normkit"`` or ``"torch"``.
        backend: for ``to="normkit"``, the ``backend=`` of the new layers (default ``"auto"``).
        inplace: modify ``model`` instead of a deep copy (a root norm is still returned anew).
        return_report: also return a :class:`ConversionReport`.

    >>> m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    >>> nk = convert(m, "normkit")
    >>> type(nk[1]).__module__
    'normkit.nn.layernorm'
    """
    if to not in ("normkit", "torch"):
        raise ValueError(f"convert: to must be 'normkit' or 'torch' (got {to!r})")
    if backend is not None and to != "normkit":
        raise ValueError("convert: backend= applies to to='normkit' only")
    table = _BY_TORCH if to == "normkit" else _BY_NORMKIT
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport(to=to)
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
        modules[id(m)] = m
    new_root = model
    with torch.no_grad():
        for key, m in modules.items():
            twin = table.get(type(m))
            shown = ", ".join(n or "<root>" for n in names[key])
            if twin is None:
                if "Norm" in type(m).__name__:
                    other = "torch.nn" if to == "torch" else "normkit.nn"
                    report.skipped[shown] = (
                        f"{type(m).__name__} has no exact twin in {other} (only the classes of "
                        "normkit.inference.TWINS convert; subclasses are left alone)"
                    )
                continue
            blocker = twin.to_torch_blocker(m) if to == "torch" else None
            if blocker is not None:
                report.skipped[shown] = blocker
                continue
            new = _convert_one(m, twin, to, backend)
            for name in names[key]:
                if not name:
                    new_root = new
                    continue
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, new)
            lib = "normkit.nn" if to == "normkit" else "torch.nn"
            report.converted.append(
                Converted(shown, type(m).__name__, f"{lib}.{type(new).__name__}")
            )
    return (new_root, report) if return_report else new_root
