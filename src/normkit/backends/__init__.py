"""Backends: one file per backend, all plugged into :mod:`normkit.backends.registry`.

``reference`` (pure-torch math, always available) and ``torch`` (native ops) ship with the core;
optional backends register themselves on import when their dependencies are present.
"""

import importlib.util

from normkit.backends import (  # noqa: F401  (registration side effect)
    reference,
    torch_native,
    triton_backend,
)
from normkit.backends.registry import (
    OPS,
    Backend,
    available,
    dispatch,
    get,
    names,
    register,
    resolve,
)

if importlib.util.find_spec("numba") is not None:  # optional extra: normkit[fast]
    from normkit.backends import numba_backend  # noqa: F401

__all__ = ["OPS", "Backend", "available", "dispatch", "get", "names", "register", "resolve"]
