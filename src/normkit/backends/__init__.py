"""Backends: one file per backend, all plugged into :mod:`normkit.backends.registry`.

``reference`` (pure-torch math, always available) and ``torch`` (native ops) ship with the core;
optional backends register themselves on import when their dependencies are present.
"""

from normkit._optional import installed
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

if installed("numba"):  # optional extra: normkit[fast]
    from normkit.backends import numba  # noqa: F401  (numba itself is imported on first use)

__all__ = ["OPS", "Backend", "available", "dispatch", "get", "names", "register", "resolve"]
