"""Optional dependencies: every import of one goes through :func:`require` or :func:`installed`.

The core (layers, functional, backends' torch paths, inference) needs torch, numpy and rich
only. Everything else is an extra (``pip install 'normkit[extra]'``); a feature that needs a
missing one raises :class:`MissingDependencyError`, which names the feature and the exact
install command, and the ``normkit`` command prints that line (exit status 2) instead of a
traceback. Features with a pure-torch fallback (the numba kernels) ask :func:`installed` and
take the fallback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["MissingDependencyError", "installed", "require"]

#: pip distribution names of the optional modules whose import name differs.
_DISTRIBUTIONS: dict[str, str] = {
    "sklearn": "scikit-learn",
}


class MissingDependencyError(ImportError):
    """A normkit feature needs an optional dependency that is not installed.

    The message says which feature, which package and the ``pip install`` command that adds it.
    """


def _top(name: str) -> str:
    return name.partition(".")[0]


def installed(name: str) -> bool:
    """Whether the top-level module of ``name`` can be imported (found, not imported).

    A module set to ``None`` in :data:`sys.modules` (the standard way to hide one) counts as
    missing.
    """
    return importlib.util.find_spec(_top(name)) is not None


def require(name: str, *, extra: str, feature: str) -> ModuleType:
    """Import the optional module ``name`` for ``feature``, or say how to install it.

    Parameters
    ----------
    name
        Import name, e.g. ``"sklearn"`` or ``"matplotlib.figure"``.
    extra
        The normkit extra that installs it, e.g. ``"lab"``.
    feature
        What the user asked for, as they would write it: ``"normkit lab"``,
        ``"normkit.data"``, ``"Recorder.plot"``.

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingDependencyError
        When the package is not installed. An installed package that fails to import (a broken
        install, an incompatible numpy) raises its own ImportError unchanged.

    Examples
    --------
    >>> from normkit._optional import require
    >>> require("numpy", extra="core", feature="the example").__name__
    'numpy'
    """
    top = _top(name)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if not (name == missing or name.startswith(missing + ".")):
            raise  # installed, but one of *its* own imports is missing
        package = _DISTRIBUTIONS.get(top, top)
        raise MissingDependencyError(
            f"{feature} needs {package}, which is not installed; "
            f"install it with: pip install 'normkit[{extra}]'"
        ) from err
