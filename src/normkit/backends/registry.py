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
local_response_norm x, size, alpha, beta, k                              y
rms_norm_cast       x, normalized_shape, weight, eps, casting, offset      y
layer_norm_cast     x, normalized_shape, weight, bias, eps, casting,       y
                    offset
==================  =====================================================  =====================

``var`` is the biased batch variance; ``mean``/``var`` are detached (they feed running stats).
The ``*_cast`` ops are the parity presets of :mod:`normkit._casting`: a backend implements them
bit for bit or not at all (``supports`` declines what it cannot match exactly).
Later ops (``add_layer_norm``, ``add_rms_norm``, ...) join this table by name.

**The auto rule.** ``backend="auto"`` takes the backend a *measured table* names for the
input's signature: op, direction (forward only, or forward + backward when autograd records),
device type, dtype, memory layout and size (a power-of-two class of ``numel``). The table holds,
per signature, the backend that was measured fastest against torch eager on this kind of
machine (``"torch"`` where nothing beat it); sizes between two measured ones take the smaller
one's entry, sizes below the smallest measured take ``"torch"``. normkit ships a table measured
on a 2-core AVX-512 CPU (``auto_table.json`` in this package); ``normkit tune`` re-measures on
the user's machine and writes the table to the user cache dir (``$XDG_CACHE_HOME/normkit/`` or
``~/.cache/normkit/``), which then takes precedence, as ``torch.backends.cudnn.benchmark`` does
for convolutions. Devices the table has no row for (e.g. CUDA on a machine nobody tuned) fall
back to the priority walk: the registered backends from highest to lowest ``priority``, the
first that is available, implements the op, supports the input and *prefers* it.
``reference`` (priority 0) accepts everything, so the walk always ends.

The table file is read at the first auto resolution in eager mode; a resolution while
torch.compile traces (no file access inside a graph) takes ``"torch"`` until then.
Resolution is cached per signature, so a layer called again with an input of the same kind pays
one dictionary lookup. ``supports``/``prefers`` must therefore depend on the input only through
that signature (device, dtype, layout, size class, emptiness).

**Empty inputs.** An input with no elements has nothing to compute: whatever backend is asked
for, it runs on ``reference``, whose plain torch ops give torch's empty result (and the zero
parameter gradients torch gives), so no backend needs a special case for it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from normkit._optional import require

__all__ = [
    "OPS",
    "ROW_OPS",
    "Backend",
    "auto_table",
    "auto_table_path",
    "available",
    "dispatch",
    "get",
    "names",
    "register",
    "resolve",
    "set_auto_table",
    "signature",
    "user_table_path",
]

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

#: Backends that register themselves only when their extra is installed: name -> (module, extra).
_OPTIONAL: dict[str, tuple[str, str]] = {"numba": ("numba", "fast")}


def register(backend: Backend, *, replace: bool = False) -> None:
    """Add a backend under its name (``replace=True`` to override an existing one).

    >>> register(get("reference"), replace=True)     # a new backend: register(Backend(...))
    """
    if backend.name == "auto":
        raise ValueError("'auto' is reserved for the automatic choice; pick another backend name")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(
            f"a backend named {backend.name!r} is already registered; pass replace=True to override"
        )
    _REGISTRY[backend.name] = backend
    _RESOLVED.clear()


def names() -> list[str]:
    """All registered backend names, highest priority first (available or not).

    >>> names()[-1]                                 # priority 0: accepts every input
    'reference'
    """
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def available() -> list[str]:
    """Names of the backends usable on this machine, highest priority first.

    >>> {"torch", "reference"} <= set(available())
    True
    """
    return [n for n in names() if _REGISTRY[n].is_available()]


def get(name: str) -> Backend:
    """The backend registered as ``name``.

    >>> get("torch").name
    'torch'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _OPTIONAL:  # not registered because its dependency is missing: say so
            module, extra = _OPTIONAL[name]
            require(module, extra=extra, feature=f"backend={name!r}")
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {names()}") from None


# --------------------------------------------------------------------------- the measured table

_DEFAULT_TABLE = Path(__file__).with_name("auto_table.json")

#: (op, direction, device type, dtype, layout) → [(measured numel, backend)], sorted by numel.
_Table = dict[tuple[str, str, str, str, str], list[tuple[int, str]]]
_TABLE: list[_Table] = []  # the loaded table, once
_RESOLVED: dict[tuple[Any, ...], Backend] = {}


def user_table_path() -> Path:
    """Where ``normkit tune`` writes its table: ``$XDG_CACHE_HOME/normkit/auto_table.json``
    (``~/.cache/normkit/auto_table.json`` without ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normkit" / "auto_table.json"


def auto_table_path() -> Path:
    """The table ``"auto"`` reads: the user's tuned one if it exists, else the shipped default."""
    user = user_table_path()
    return user if user.is_file() else _DEFAULT_TABLE


def _parse(rows: list[dict[str, Any]]) -> _Table:
    table: _Table = {}
    for r in rows:
        key = (r["op"], r["dir"], r["device"], r["dtype"], r["layout"])
        table.setdefault(key, []).append((int(r["numel"]), r["backend"]))
    for entries in table.values():
        entries.sort()
    return table


def auto_table() -> list[dict[str, Any]]:
    """The rows of the table ``"auto"`` follows (see the module docstring), from its file."""
    path = auto_table_path()
    try:
        rows = json.loads(path.read_text())["rows"]
        _parse(rows)
    except (OSError, ValueError, KeyError, TypeError) as err:
        if path == _DEFAULT_TABLE:
            raise
        warnings.warn(
            f"ignoring the auto table {path} ({type(err).__name__}: {err}); using normkit's "
            "default. Re-run `normkit tune` or delete the file",
            RuntimeWarning,
            stacklevel=2,
        )
        rows = json.loads(_DEFAULT_TABLE.read_text())["rows"]
    return list(rows)


def set_auto_table(rows: list[dict[str, Any]] | None) -> None:
    """Make ``"auto"`` follow ``rows`` (``None``: reload from :func:`auto_table_path`).

    Each row: ``op``, ``dir`` (``"fwd"`` or ``"fwd+bwd"``), ``device`` (``"cpu"``, ``"cuda"``),
    ``dtype`` (``"float32"``), ``layout`` (``"contiguous"``, ``"channels_last"``, ``"rows"``: a
    2-D ``(N, C)`` batch norm input, ``"strided"``),
    ``numel`` (the measured size) and ``backend`` (the fastest there).
    """
    _TABLE.clear()
    _TABLE.append(_parse(auto_table() if rows is None else rows))
    _RESOLVED.clear()


def _table() -> _Table:
    if not _TABLE:  # read once, on the first auto resolution outside torch.compile tracing
        set_auto_table(None)
    return _TABLE[0]


#: Ops over feature axis 1 whose kernels stream a 2-D ``(N, C)`` input as rows of features (as
#: they stream channels_last), not as the ``(N, C, *)`` planes a contiguous 4-D input gives: a
#: layout of its own in the table (``"rows"``), measured apart by ``normkit tune``.
ROW_OPS: tuple[str, ...] = ("batch_norm_train", "batch_norm_eval")


def _layout(x: Tensor, op: str = "") -> str:
    if x.is_contiguous():
        return "rows" if x.ndim == 2 and op in ROW_OPS else "contiguous"
    if (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)) or (
        x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return "channels_last"
    return "strided"


def _kind(op: str, x: Tensor, needs_grad: bool | None) -> tuple[Any, ...]:
    if needs_grad is None:
        needs_grad = x.requires_grad and torch.is_grad_enabled()
    return (op, "fwd+bwd" if needs_grad else "fwd", x.device.type, x.dtype, _layout(x, op))


def signature(op: str, x: Tensor, needs_grad: bool | None = None) -> tuple[Any, ...]:
    """The input's signature for the auto rule: ``(op, direction, device type, dtype, layout,
    size class)`` with size class ``numel().bit_length()`` (a power-of-two bucket).

    ``needs_grad`` (default: whether autograd records ``x``) picks the direction.
    """
    return (*_kind(op, x, needs_grad), x.numel().bit_length())


def _measured(sig: tuple[Any, ...], numel: int) -> str | None:
    """The table's backend for ``sig`` at ``numel`` elements: the entry of the largest measured
    size ≤ ``numel``, ``"torch"`` below the smallest; ``None`` when the table has no row for the
    device type (then the priority walk decides)."""
    if not _TABLE and torch.compiler.is_compiling():
        return "torch"  # the table is read outside tracing (no file access in a graph)
    table = _table()
    entries = table.get((*sig[:3], str(sig[3]).removeprefix("torch."), sig[4]))
    if entries is None:
        if any(key[2] == sig[2] for key in table):
            return "torch"
        return None
    choice = "torch"
    for size, name in entries:
        if numel < size:
            break
        choice = name
    return choice


def _auto(op: str, x: Tensor, sig: tuple[Any, ...]) -> Backend:
    name = _measured(sig, x.numel())
    if name is None:  # nothing measured on this device type: the priority walk
        for n in names():
            b = _REGISTRY[n]
            if b.check(op, x) is None and b.prefers(op, x):
                return b
    else:  # the measured choice, else the baselines it was measured against
        for n in (name, "torch", "reference"):
            b = _REGISTRY.get(n)  # type: ignore[assignment]
            if b is not None and b.check(op, x) is None:
                return b
    raise ValueError(f"no registered backend implements {op!r} for this input")


def resolve(
    op: str, x: Tensor, backend: str = "auto", *, needs_grad: bool | None = None
) -> Backend:
    """The backend that runs ``op`` on ``x``: the named one (checked) or the auto choice.

    Cached per (backend name, :func:`signature`); registering a backend or setting a table
    clears the cache.

    >>> resolve("layer_norm", torch.randn(4, 8), "reference").name
    'reference'
    >>> resolve("layer_norm", torch.randn(4, 8)).name in available()   # the auto choice
    True
    """
    if torch.compiler.is_exporting():
        return _for_export(op, x)
    if torch.compiler.is_compiling():  # resolved while tracing: nothing cached (no side effect)
        return _resolve(op, x, backend, _kind(op, x, needs_grad))
    sig = signature(op, x, needs_grad)
    key = (backend, *sig)
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(op, x, backend, sig)
    return hit


def _for_export(op: str, x: Tensor) -> Backend:
    """While ``torch.export``/``torch.onnx`` trace: the backend built from standard torch ops
    (``torch``, else ``reference``), whatever was asked, so the graph holds operators every
    runtime knows (ONNX ``BatchNormalization``, ``LayerNormalization``, ...) and never a
    normkit custom op; the numbers are the eager ones up to the ops' rounding."""
    for n in ("torch", "reference"):
        b = _REGISTRY.get(n)
        if b is not None and b.check(op, x) is None:
            return b
    raise ValueError(f"no backend built from standard torch ops implements {op!r} for export")


def _resolve(op: str, x: Tensor, backend: str, sig: tuple[Any, ...]) -> Backend:
    if x.numel() == 0:  # (its own size class: the cache keeps it apart)
        if backend != "auto":
            get(backend)  # an unknown name is still an error
        return _REGISTRY["reference"]
    if backend != "auto":
        b = get(backend)
        reason = b.check(op, x)
        if reason is not None:
            raise ValueError(
                f"backend {backend!r} cannot run {op} on a {x.dtype} tensor on {x.device} "
                f"of shape {tuple(x.shape)}: {reason}. Use backend='auto' or one of {available()}"
            )
        return b
    return _auto(op, x, sig)


def dispatch(op: str, x: Tensor, *args: Any, backend: str = "auto") -> Any:
    """Run ``op`` on ``x`` (and the op's further arguments) with the resolved backend.

    The direction of the auto rule is forward + backward when autograd records ``x`` or any
    tensor argument (e.g. a weight that requires grad).

    >>> x = torch.randn(4, 8)
    >>> y = dispatch("layer_norm", x, (8,), None, None, 1e-5)
    >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (8,)), atol=1e-6)
    True
    """
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(isinstance(a, Tensor) and a.requires_grad for a in args)
    )
    return resolve(op, x, backend, needs_grad=needs_grad).ops[op](x, *args)
