"""The suite registry: ``register_suite(name, fn, help)`` and lookup."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Suite", "get_suite", "load_suites", "register_suite", "suite_names"]

SuiteFn = Callable[..., list[dict[str, Any]]]
_SUITES: dict[str, Suite] = {}


@dataclass(frozen=True)
class Suite:
    """A named benchmark: ``fn(quick, **options)`` returns a list of row dicts."""

    name: str
    fn: SuiteFn
    help: str
    default: bool = False

    def options(self) -> set[str]:
        """The optional keywords (``ops``, ``compile``, ``reps``, ...) that ``fn`` accepts."""
        params = inspect.signature(self.fn).parameters
        return {n for n in params if n != "quick"}

    def run(self, quick: bool, **options: Any) -> list[dict[str, Any]]:
        """Call ``fn`` with ``quick`` and only the options it declares."""
        accepted = self.options()
        rows = self.fn(quick, **{k: v for k, v in options.items() if k in accepted})
        return [{"suite": self.name, **r} for r in rows]


def _key(fn: SuiteFn) -> tuple[str, str]:
    return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn))


def register_suite(name: str, fn: SuiteFn, help: str, *, default: bool = False) -> None:
    """Register ``fn`` as the suite ``name`` (a CLI flag ``--name``).

    ``default=True`` marks the suite that runs when no suite flag is given (the kernels suite).
    Re-registering the same function under the same name is a no-op (module re-imports).
    """
    if not name.replace("-", "_").isidentifier():
        raise ValueError(f"suite name must be a flag-friendly identifier (got {name!r})")
    old = _SUITES.get(name)
    same = old is not None and _key(old.fn) == _key(fn)
    if old is not None and not same:
        raise ValueError(f"a benchmark suite named {name!r} is already registered")
    _SUITES[name] = Suite(name, fn, help, default)


def load_suites() -> None:
    """Import every module of :data:`normkit.bench.suites.SUITE_MODULES` (registration)."""
    from normkit.bench.suites import SUITE_MODULES

    for module in SUITE_MODULES:
        importlib.import_module(module)


def suite_names() -> list[str]:
    """Registered suite names, the default suite first."""
    return sorted(_SUITES, key=lambda n: (not _SUITES[n].default, n))


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``."""
    try:
        return _SUITES[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark suite {name!r}; expected one of {suite_names()}"
        ) from None
