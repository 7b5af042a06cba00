"""The backend registry: a string name per backend, capability checks, one ``"auto"`` rule.

A backend is a table of op implementations (each an autograd-aware callable) plus two
predicates. Adding a backend is one file that builds a :class:`Backend` and calls
:func:`register`; nothing else in normkit changes.

Ops and their calling conventions (all stateless; statistics in the accumulation dtype):

==================  =====================================================  =====================
op                  arguments                                              returns
==================  =====================================================  =====================
batch_norm_train    x, weight, bias, eps, axis                             y, mean (C,), var (C,)
batch_norm_eval     x, running_mean, running_var, weight, bias, eps, axis  y
layer_norm          x, normalized_shape, weight, bias, eps                 y
rms_norm            x, normalized_shape, weight, eps                       y
group_norm          x, num_groups, weight, bias, eps                       y
instance_norm       x, weight, bias, eps                                   y
rms_norm_cast       x, normalized_shape, weight, eps, casting, offset      y
layer_norm_cast     x, normalized_shape, weight, bias, eps, casting,       y
                    offset
==================  =====================================================  =====================

``var`` is the biased batch variance; ``mean``/``var`` are detached (they feed running stats).
The ``*_cast`` ops are the parity presets of :mod:`normkit._casting`: a backend implements them
bit for bit or not at all (``supports`` declines what it cannot match exactly).
Later ops (``add_layer_norm``, ``add_rms_norm``, ...) join this table by name.

**The auto rule.** ``backend="auto"`` walks the registered backends from highest to lowest
``priority`` and takes the first that is available on this machine, implements the op, supports
the input (dtype, device, layout) and *prefers* it (a backend may decline inputs it is slower on,
e.g. tensors too small to amortise a parallel kernel launch). ``reference`` (priority 0) accepts
everything, so the walk always ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["OPS", "Backend", "available", "dispatch", "get", "names", "register", "resolve"]

OPS: tuple[str, ...] = (
    "batch_norm_train",
    "batch_norm_eval",
    "layer_norm",
    "rms_norm",
    "group_norm",
    "instance_norm",
    "rms_norm_cast",
    "layer_norm_cast",
)


def _always_ok(op: str, x: Tensor) -> str | None:
    return None


def _always(op: str, x: Tensor) -> bool:
    return True


def _yes() -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """A named set of op implementations.

    ``supports(op, x)`` returns ``None`` when the backend can run ``op`` on ``x`` and otherwise a
    short reason (shown in errors). ``prefers(op, x)`` is the backend's part of the auto rule.
    ``is_available()`` says whether its dependencies import on this machine.
    """

    name: str
    ops: Mapping[str, Callable[..., Any]]
    priority: int = 0
    supports: Callable[[str, Tensor], str | None] = _always_ok
    prefers: Callable[[str, Tensor], bool] = _always
    is_available: Callable[[], bool] = _yes
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self, op: str, x: Tensor) -> str | None:
        """Why this backend cannot run ``op`` on ``x``, or ``None`` when it can."""
        if not self.is_available():
            return f"backend {self.name!r} is not available on this machine"
        if op not in self.ops:
            return f"backend {self.name!r} does not implement {op!r}"
        return self.supports(op, x)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend, *, replace: bool = False) -> None:
    """Add a backend under its name (``replace=True`` to override an existing one)."""
    if backend.name == "auto":
        raise ValueError("'auto' is reserved for the automatic choice; pick another backend name")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(
            f"a backend named {backend.name!r} is already registered; pass replace=True to override"
        )
    _REGISTRY[backend.name] = backend


def names() -> list[str]:
    """All registered backend names, highest priority first (available or not)."""
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def available() -> list[str]:
    """Names of the backends usable on this machine, highest priority first."""
    return [n for n in names() if _REGISTRY[n].is_available()]


def get(name: str) -> Backend:
    """The backend registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {names()}") from None


def resolve(op: str, x: Tensor, backend: str = "auto") -> Backend:
    """The backend that runs ``op`` on ``x``: the named one (checked) or the auto choice."""
    if backend != "auto":
        b = get(backend)
        reason = b.check(op, x)
        if reason is not None:
            raise ValueError(
                f"backend {backend!r} cannot run {op} on a {x.dtype} tensor on {x.device} "
                f"of shape {tuple(x.shape)}: {reason}. Use backend='auto' or one of {available()}"
            )
        return b
    for name in names():
        b = _REGISTRY[name]
        if b.check(op, x) is None and b.prefers(op, x):
            return b
    raise ValueError(f"no registered backend implements {op!r} for this input")


def dispatch(op: str, x: Tensor, *args: Any, backend: str = "auto") -> Any:
    """Run ``op`` on ``x`` (and the op's further arguments) with the resolved backend."""
    return resolve(op, x, backend).ops[op](x, *args)
