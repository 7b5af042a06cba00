"""``watch(model)``: per-layer activation and gradient statistics recorded during training.

Hooks. The model's forward pre-hook (always on) counts the steps. For a recorded step it switches
on a forward hook per leaf module, one on the model and the optimizer's step pre/post hooks
(with ``every=1`` they stay on); switching is a dict insert/remove, not a registration. Each
leaf hook catches the gradient w.r.t. its output with the output's own hook dict registered on
the autograd node that made it (what ``Tensor.register_hook`` does, without its handle), which
leaves the graph untouched: a watched model computes bit-identical outputs and gradients, and
in-place ops after a layer (``ReLU(inplace=True)``) keep working. When the backward ends, a
callback queued on the autograd engine measures the kept gradients with the parameter gradients.

Measuring. On CPU, float32/float64 tensors of up to :data:`FUSED_MAX_NUMEL` values go to one
numba call (:mod:`normkit.diagnostics._fused`) per phase: all layer outputs when the forward
ends, all gradients when the backward ends, the parameters before and after the optimizer step
(copy + ‖w‖², then ‖w − copy‖²). A layer's output is only kept by its hook (not measured there)
once one step measured in the hook showed that nothing changes it in place later in the
forward. Everything else (accelerators, other dtypes, big tensors) is measured with torch
reductions; accelerator values stay 0-d tensors until read, then copied in one transfer (no
sync per layer and step).

Replaying. A recorded forward (backward) whose outputs (gradients) all went to the kernel leaves
a :class:`_Plan` (leaf calls in order, tensor signatures, the kernel's table). A later step that
follows it only keeps each output in its hook; the end of the forward checks the calls, the
versions and the signatures against the plan, refills the table's addresses and measures in one
call; the output-gradient hooks are registered there, in one loop. Anything else (another batch
size, a skipped layer, an output changed in place) hands the step to the per-layer path.

Storing. The values go into typed arrays (no per-value Python objects the garbage collector
would scan), are sorted into per-spec NumPy chunks now and then and when read, and the metrics
are computed from those vectorised.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

from normkit._stats import accumulation_dtype
from normkit.diagnostics._findings import Finding
from normkit.diagnostics._modules import (
    SAT_HIGH,
    ActivationKind,
    activation_kind,
    is_depth_layer,
    leaf_modules,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["METRICS", "RECORD", "LayerInfo", "Recorder", "watch"]

_ACT = ("act_mean", "act_std", "act_min", "act_max")
_SUMSQ = ("grad_sq", "update_sq", "weight_sq")  # per-parameter norms, summed in quadrature
# pass-through modules: their output is their input (or a view of it); nothing new to measure
_PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten, nn.Identity)
RECORD: tuple[str, ...] = ("activations", "gradients", "updates")
"""What :func:`watch` can record (all by default); see its ``record`` argument."""
METRICS: tuple[str, ...] = (
    *_ACT,
    "dead_frac",
    "saturated_frac",
    "grad_out_norm",
    "grad_norm",
    "weight_norm",
    "update_ratio",
)
"""Per layer and recorded step: activation mean/std/min/max of the layer's output; fraction of
dead units (ReLU layers: channels that are ≤ 0 for every sample and position of the batch);
fraction of saturated outputs (sigmoid outside [0.01, 0.99], tanh with |y| > 0.99); L2 norm of
the gradient w.r.t. the layer's output; L2 norm of the gradient of the layer's own parameters;
L2 norm of those parameters before the optimizer step and ‖Δw‖/‖w‖ of that step."""

# A pending value: (metric, layer, mode, arg). mode "set" stores the value, "sq" adds its square
# (per-parameter norms of one layer), "dead" stores 1 − value/arg (alive units of arg), "frac"
# stores value/arg (count of saturated outputs among arg), "mean" value/arg (Σx → mean), "msq"
# √(value²/arg − mean²) (‖x‖ → std, with the layer's mean of that step).
_Spec = tuple[str, str, str, int]
_FLUSH_AT = 1 << 20
_HIST_BINS = 40
_HIST_SAMPLE = 2048
_FLOATS = (torch.float32, torch.float64)
#: Largest tensor (elements) whose statistics go to the one-call numba kernel on CPU; above it
#: torch's (multi-threaded) reductions are as fast and the per-op dispatch cost is negligible.
FUSED_MAX_NUMEL = 1 << 20
_MODES = {None: 0, "relu": 1, "sigmoid": 2, "tanh": 3}  # _fused.MOMENTS/RELU/SIGMOID/TANH
_KINDS = {mode: kind for kind, mode in _MODES.items()}
_SUMSQ, _SNAPSHOT, _DELTA = 4, 5, 6


@dataclass(frozen=True)
class LayerInfo:
    """A watched leaf module: ``name`` (qualified; a module called twice in one forward appears
    again as ``name#2``), ``kind`` (class name), ``depth`` (conv/linear-like, see
    :func:`normkit.diagnostics.is_depth_layer`) and ``activation`` (relu/sigmoid/tanh or None)."""

    name: str
    kind: str
    depth: bool
    activation: ActivationKind | None


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, Tensor):
                return o
    return None


def hook_output_grad(out: Tensor, fn: Any) -> None:
    """Call ``fn(grad)`` with the gradient w.r.t. ``out`` (a non-leaf tensor without tensor
    hooks yet). What ``Tensor.register_hook`` does, minus its RemovableHandle (~6 µs of the ~7 µs
    it costs): the tensor's hook dict registered on the node that made ``out``. Like a tensor
    hook it sees the gradient w.r.t. this output, also when a later op changes ``out`` in place;
    nothing to remove, the dict dies with the tensor. An OrderedDict: a caller's later
    ``register_hook`` on ``out`` adds to it and weak-refs it."""
    hooks: OrderedDict[int, Any] = OrderedDict()
    hooks[-1] = fn
    out._backward_hooks = hooks
    out.grad_fn._register_hook_dict(out)


def _histogram(sample: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Counts in ``_HIST_BINS`` equal bins over [lo, hi] (the last bin closed), as torch.histc,
    by bucketize + bincount: deterministic, so it also runs under
    torch.use_deterministic_algorithms(True) (torch.histc refuses to on CUDA), no device sync."""
    unit = torch.linspace(0, 1, _HIST_BINS + 1, device=sample.device, dtype=sample.dtype)
    inner = lo + (hi - lo) * unit[1:-1]
    idx = torch.bucketize(sample.flatten(), inner, right=True)
    return torch.bincount(idx, minlength=_HIST_BINS)


@functools.cache
def _fused_module() -> Any:
    """:mod:`normkit.diagnostics._fused` (the one-call statistics kernels), or None without
    numba."""
    if importlib.util.find_spec("numba") is None:
        return None
    import normkit.backends  # noqa: F401  (sets numba's on-disk cache before the first jit)
    from normkit.diagnostics import _fused

    return _fused


def _fused_kernel() -> Any:
    """``tensor_stats`` of :mod:`normkit.diagnostics._fused`, or None without numba."""
    fused = _fused_module()
    return None if fused is None else fused.tensor_stats


def _act_specs(key: str, act: ActivationKind | None, n: int, units: int) -> list[_Spec]:
    """What a layer output of ``n`` values yields, in the order measured: mean (from Σx), std
    (from ‖x‖), min, max, and for ReLU layers the dead fraction of ``units`` (alive count
    measured), for sigmoid/tanh the saturated fraction (count measured)."""
    specs: list[_Spec] = [
        ("act_mean", key, "mean", n),
        ("act_std", key, "msq", n),
        ("act_min", key, "set", 0),
        ("act_max", key, "set", 0),
    ]
    if act == "relu":
        specs.append(("dead_frac", key, "dead", units))
    elif act is not None:
        specs.append(("saturated_frac", key, "frac", n))
    return specs


def _fused_row(t: Tensor, mode: int) -> list[int] | None:
    """The kernel's table row for ``t`` (see :mod:`normkit.diagnostics._fused`), or None when
    the tensor is not for it: not CPU float32/float64, empty, above :data:`FUSED_MAX_NUMEL`, or
    not laid out densely (contiguous; channels-last too, its channel is then the fastest)."""
    if not t.is_cpu or t.dtype not in _FLOATS or t.layout is not torch.strided or t.is_nested:
        return None
    n = t.numel()
    if not 0 < n <= FUSED_MAX_NUMEL:
        return None
    if t.ndim < 2:
        channels, inner = n, 1  # every value its own unit
    elif t.is_contiguous():
        channels = t.shape[1]
        inner = n // (t.shape[0] * channels)
    elif t.ndim in (4, 5) and t.is_contiguous(
        memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d
    ):
        channels, inner = t.shape[1], 1
    else:
        return None
    return [t.data_ptr(), n, t.dtype is torch.float64, mode, channels, inner, 0]


def _flat_row(t: Tensor, mode: int) -> list[int] | None:
    """:func:`_fused_row` for the modes that read the values in any order (:data:`_SUMSQ`,
    :data:`_SNAPSHOT`): no channel layout to work out, and the per-tensor cost matters, a
    backward hands over two tensors per layer."""
    if (
        t.is_cpu
        and t.dtype in _FLOATS
        and t.layout is torch.strided
        and not t.is_nested
        and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))
    ):
        n = t.numel()
        if 0 < n <= FUSED_MAX_NUMEL:
            return [t.data_ptr(), n, t.dtype is torch.float64, mode, 1, 1, 0]
    return None


def _run_fused(rows: list[list[int]], snap32: Any = None, snap64: Any = None) -> Any:
    """``(Σx, Σx², min, max, count)`` per row, float64 ``(len(rows), 5)``."""
    meta = np.array(rows, dtype=np.int64)
    out = np.empty((len(rows), 5))  # (every row writes what its mode reads)
    empty32, empty64 = _EMPTY
    _fused_kernel()(
        meta,
        out,
        empty32 if snap32 is None else snap32,
        empty64 if snap64 is None else snap64,
    )
    return out


_EMPTY = (np.zeros(0, np.float32), np.zeros(0, np.float64))
_NO_PTRS = array("q")  # (replay_stats: keep the addresses in the table)


class _Switch:
    """A registered hook switched off and on again without registering it again.

    Registering costs ~6 µs (a RemovableHandle with its weak references) and a recorded step
    of ``every > 1`` needs a hook per leaf plus the root's and the optimizer's: here the id of
    one registration is kept and switching is one insertion into / removal from the hooks dict
    the handle points to (what its ``remove`` does). Starts off."""

    def __init__(self, handle: RemovableHandle, fn: Any) -> None:
        self._hooks, self._id, self._fn = handle.hooks_dict_ref(), handle.id, fn
        handle.remove()

    def on(self) -> None:
        self._hooks[self._id] = self._fn

    def off(self) -> None:
        self._hooks.pop(self._id, None)


class _OptPlan:
    """An optimizer's watched parameters: ``names``/``params`` measured with torch ops,
    ``fused_*`` by the kernel from the tables ``snap`` (copy into ``bufs`` + Σw², in column 1 of
    ``out``) and ``delta`` (Σ(w − copy)², column 0) at the storage addresses ``ptrs``; the
    update and weight norms are gathered into ``vals`` (spec ids ``ids``)."""

    def __init__(self, sig: tuple[tuple[int, int], ...]) -> None:
        self.sig = sig
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.fused_names: list[str] = []
        self.fused_params: list[Tensor] = []
        self.ptrs: list[int] = []
        self.snap: Any = None
        self.delta: Any = None
        self.bufs: tuple[Any, Any] = _EMPTY
        self.out: Any = None
        self.take: Any = None
        self.root: Any = None
        self.vals = array("d")
        self.ids = array("q")  # spec ids of (update_sq…, weight_sq…) of fused_names

    def valid(self) -> bool:
        return [p.data_ptr() for p in self.fused_params] == self.ptrs


def _gathering(take: Any, root: Any = None) -> tuple[Any, Any, array[float]]:
    """What ``replay_stats`` gathers into: flat indices ``take`` of a ``(rows, 5)`` result table,
    which of them to square-root (default: column 1, Σx² → ‖x‖) and the value buffer."""
    if root is None:
        root = take % 5 == 1
    return take, root, array("d", bytes(8 * len(take)))


def _signature(ts: list[Tensor]) -> list[tuple[Any, ...]] | None:
    """What a plan's kernel table assumes of each tensor: shape, strides, dtype and that it is
    on the CPU (equal signatures: the same table row but the address). None when one is not a
    dense tensor (sparse, nested: no strides) or missing (a parameter without a gradient)."""
    try:
        return [(t.shape, t.stride(), t.dtype, t.is_cpu) for t in ts]
    except (AttributeError, RuntimeError):
        return None


def _strides(ts: list[Tensor]) -> list[tuple[int, ...]] | None:
    """The strides of dense tensors (None when one has none: sparse, nested)."""
    try:
        return [t.stride() for t in ts]
    except RuntimeError:
        return None


class _Plan:
    """A recorded phase's structure, kept to replay it. ``keys``: the layers in order (leaf
    calls of a forward, output gradients as a backward delivers them); ``sigs``: the
    :func:`_signature` of the tensors the kernel reads (rows of ``meta``, whose address column
    is refilled per step; results in ``out``); ``ids``: the spec ids of the values the kernel
    gathers into ``vals`` (from ``take``, square-rooted where ``root``). A forward's plan also
    keeps the leaf ``names`` (the hooks' own strings: compared by identity) and activation
    ``acts``; a backward's the ``params`` whose gradients follow the output gradients, and the
    forward plan ``fplan`` its step followed (see :meth:`Recorder._on_backward_end`)."""

    __slots__ = (
        "acts",
        "fplan",
        "ids",
        "keys",
        "meta",
        "names",
        "out",
        "params",
        "root",
        "sigs",
        "take",
        "vals",
    )

    def __init__(self, keys: list[str], sigs: list[tuple[Any, ...]], rows: list[list[int]]) -> None:
        self.keys = keys
        self.sigs = sigs
        self.meta: Any = np.array(rows, dtype=np.int64) if rows else None
        self.out: Any = np.zeros((len(rows), 5))
        self.ids = array("q")
        self.take: Any = None
        self.root: Any = None
        self.vals = array("d")
        self.names: list[str] = []
        self.acts: list[ActivationKind | None] = []
        self.params: list[Tensor] = []
        self.fplan: _Plan | None = None  # (a backward's: the forward plan its step followed)

    def gather(self, take: list[int]) -> None:
        """Keep the values at flat indices ``take`` of ``out`` (column 1, Σx², as its root)."""
        self.take, self.root, self.vals = _gathering(np.array(take, dtype=np.int64))

    def run(self, ts: list[Tensor]) -> array[float] | None:
        """The kept values for ``ts``, this step's tensors of the plan (held by the caller);
        None when one has no storage to read (e.g. a sparse tensor whose shape and all-zero
        strides equal those of an expanded 1-element tensor the plan was made with)."""
        try:
            ptrs = array("q", [t.data_ptr() for t in ts])
        except RuntimeError:
            return None
        _fused_module().replay_stats(
            ptrs, self.meta, self.out, self.take, self.root, self.vals, *_EMPTY
        )
        return self.vals


def _foreach_norms(ts: list[Tensor]) -> list[Tensor]:
    """L2 norms of many dense tensors in one multi-tensor op, accumulated in float32 (float64
    for float64 tensors)."""
    if not ts:
        return []
    if all(t.dtype in (torch.float32, torch.float64) for t in ts):
        return list(torch._foreach_norm(ts))
    return [_norm(t) for t in ts]


def _norm(t: Tensor) -> Tensor:
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype in (torch.float32, torch.float64):
        return torch.linalg.vector_norm(t.detach())
    return torch.linalg.vector_norm(t.detach(), dtype=accumulation_dtype(t.dtype))


class Recorder:
    """Per-layer statistics of a model during training; create it with :func:`watch`.

    A *step* is one forward call of the watched model in training mode with gradients enabled
    (eval and ``no_grad`` forwards are not counted); steps ``0, every, 2·every, …`` are recorded.
    Read the results with :attr:`steps`, :attr:`layers`, :meth:`series` (any name of
    :data:`METRICS`), :meth:`grad_norms`, :meth:`rows`/:meth:`to_csv`; judge them with
    :meth:`verdict`; show them with :meth:`print`, :meth:`plot` and :meth:`to_html`.
    :meth:`close` (or leaving the ``with`` block) removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        hist_every: int = 20,
        record: Collection[str] = RECORD,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch expects a torch.nn.Module (got {type(model).__name__})")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"every must be a positive int (got {every!r}); use every=1 to record every step"
            )
        if isinstance(hist_every, bool) or not isinstance(hist_every, int) or hist_every < 0:
            raise ValueError(
                f"hist_every must be an int >= 0 (got {hist_every!r}); 0 disables histograms"
            )
        if isinstance(record, str):
            record = (record,)
        unknown = sorted(set(record) - set(RECORD))
        if unknown or not record:
            raise ValueError(
                f"record must name one or more of {RECORD} (got {tuple(record)!r}); e.g. "
                f"record=('gradients',) for the gradient-flow data only"
            )
        self.model = model
        self.every = every
        self.hist_every = hist_every
        self.record = tuple(r for r in RECORD if r in record)
        self._rec_act = "activations" in record
        self._rec_grad = "gradients" in record
        all_leaves = leaf_modules(model)
        self._leaves = [(n, m) for n, m in all_leaves if not isinstance(m, _PASS_THROUGH)]
        self._info: dict[str, LayerInfo] = {
            n: LayerInfo(n, type(m).__name__, is_depth_layer(m), activation_kind(m))
            for n, m in all_leaves
        }
        self._params: dict[str, list[nn.Parameter]] = {}
        for n, m in all_leaves:
            ps = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if ps:
                self._params[n] = ps
        self._flat_params = [(n, p) for n, ps in self._params.items() for p in ps]
        self._params_read = False
        self._order: list[str] = []
        self._seen: set[str] = set()
        self._steps: list[int] = []
        self._step = -1
        self._recording = False
        self._hist_now = False
        self._n_records = 0
        self._calls: dict[str, int] = {}
        self._opt_step = -1
        # the stepping optimizer's plan, copies and norms of its torch-measured parameters
        self._snapshot: tuple[_OptPlan, list[Tensor], list[Tensor]] | None = None
        self._pending_specs: list[tuple[int, _Spec]] = []
        self._pending_values: list[Tensor] = []
        # Recorded values: one (step, spec id, value) per entry, in typed arrays; now and then
        # (and when read) sorted by spec id into NumPy chunks (_groups: 16 bytes a value). Nothing
        # a recorded step keeps is a Python object the garbage collector tracks: kept tuples
        # made it run full collections (~0.2 s with torch's ~400k objects loaded) every few
        # hundred steps, and per-value dict entries cost ~0.3 µs and ~100 bytes each.
        self._col_step = array("q")
        self._col_id = array("q")
        self._col_val = array("d")
        self._groups: dict[int, list[tuple[Any, Any]]] = {}  # spec id → [(steps, values)]
        self._specs: list[_Spec] = []
        self._spec_ids: dict[_Spec, int] = {}
        self._ids_of: dict[tuple[str, str], list[int]] = {}  # (metric, layer) → spec ids
        # this step's activation statistics, read at once at the end of the forward
        self._act_specs: list[tuple[int, _Spec]] = []
        self._act_values: list[Tensor] = []
        # this backward's output gradients (layer, step, gradient, its version when handed
        # over), normed in one pass when the backward ends
        self._go_keys: list[str] = []
        self._go_steps: list[int] = []
        self._go_grads: list[Tensor] = []
        self._go_vers: list[int] = []
        self._hists: dict[str, list[tuple[int, Tensor]]] = {}
        # The CPU fast path: small float32/float64 outputs are only kept by the leaf hooks and
        # measured all at once by one numba call when the forward ends (gradients when the
        # backward ends, parameters around the optimizer step). A layer's output joins it after
        # one step measured directly showed that nothing changes it in place later in the
        # forward (e.g. a conv followed by ReLU(inplace=True) stays measured in its hook).
        self._fused = _fused_kernel() is not None
        self._deferrable: set[str] = set()
        self._mutated: set[str] = set()
        self._probes: list[tuple[str, Tensor, int]] = []
        self._deferred: list[tuple[int, str, Tensor, int, list[int]]] = []
        self._opt_plans: dict[int, _OptPlan] = {}
        self._act_ids: dict[tuple[str, int, int, int], list[int]] = {}
        self._grad_out_ids: dict[str, int] = {}
        self._param_ids: list[int] = []
        # Replayed steps: once a recorded forward (backward) ran with every output (gradient)
        # on the kernel path, its structure is kept as a plan; a later step that follows it
        # (same leaf calls, same shapes, nothing changed in place) only refills the addresses.
        # A forward that leaves the plan midway goes back to the per-layer path from there.
        self._fplan: _Plan | None = None
        self._fast: _Plan | None = None  # the plan this forward follows
        self._outs: list[Tensor] = []  # its outputs so far, and their versions at the hooks
        self._vers: list[int] = []
        self._log: list[tuple[str, str, Tensor, list[int] | None]] | None = []
        self._bplan: _Plan | None = None
        self._followed: tuple[int, _Plan | None] = (-1, None)  # (step, forward plan it matched)
        # Switched on for the recorded steps only (with every=1 they stay on: cheaper than
        # switching each step); the root's pre-hook, always on, counts the steps.
        self._step_hooks = [
            _Switch(m.register_forward_hook(fn), fn)
            for name, m in (self._leaves if self._rec_act or self._rec_grad else [])
            for fn in [partial(self._on_leaf, name)]
        ]
        self._step_hooks.append(
            _Switch(model.register_forward_hook(self._on_root_post), self._on_root_post)
        )
        self._persistent = every == 1
        self._hooks_on = False
        self._in_forward = False
        if self._persistent:
            self._install_step_hooks()
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._on_root_pre),
        ]
        if optimizer is None:
            from torch.optim.optimizer import (
                register_optimizer_step_post_hook,
                register_optimizer_step_pre_hook,
            )

            pre, post = register_optimizer_step_pre_hook, register_optimizer_step_post_hook
        else:
            pre, post = optimizer.register_step_pre_hook, optimizer.register_step_post_hook
        # on from a recorded forward until the next optimizer step ends (always with every=1)
        self._opt_hooks = (
            [
                _Switch(pre(self._on_opt_pre), self._on_opt_pre),
                _Switch(post(self._on_opt_post), self._on_opt_post),
            ]
            if "updates" in record
            else []
        )
        if self._persistent:
            for h in self._opt_hooks:
                h.on()
        self._closed = False

    # ----------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def attached(self) -> bool:
        """Whether the hooks are still installed (True until :meth:`close`)."""
        return not self._closed

    def close(self) -> None:
        """Remove every hook this recorder installed; the recorded data stays readable."""
        self._drop_step_hooks(all_hooks=True)
        for h in self._opt_hooks:
            h.off()
        self._in_forward = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._snapshot = None
        self._recording = False
        self._closed = True
        self._flush()

    def _install_step_hooks(self) -> None:
        for h in self._step_hooks:
            h.on()
        self._hooks_on = True

    def _drop_step_hooks(self, *, all_hooks: bool = False) -> None:
        if not self._hooks_on or (self._persistent and not all_hooks):
            return
        for h in self._step_hooks:
            h.off()
        self._hooks_on = False

    def _emit(self, specs: list[tuple[int, _Spec]], values: list[Tensor]) -> None:
        """Hand over one hook's batch of 0-d results. On CPU they are read at once with one
        stack + tolist (instead of one .item() and bookkeeping call per value) and sorted into
        the per-metric tables only when read; accelerator values wait for one batched
        transfer, so no hook syncs a GPU."""
        if not values:
            return
        if all(v.is_cpu for v in values):
            self._put(specs, torch.stack(values).tolist())  # promotes int counts
        else:
            self._pending_specs += specs
            self._pending_values += values

    def _id(self, spec: _Spec) -> int:
        i = self._spec_ids.get(spec)
        if i is None:
            i = self._spec_ids[spec] = len(self._specs)
            self._specs.append(spec)
            self._ids_of.setdefault((spec[0], spec[1]), []).append(i)
        return i

    def _put(self, specs: list[tuple[int, _Spec]], values: list[float]) -> None:
        for step, spec in specs:
            self._col_step.append(step)
            self._col_id.append(self._id(spec))
        self._col_val.extend(values)

    def _put_block(
        self, step: int, ids: array[int] | list[int], values: array[float] | list[float]
    ) -> None:
        """Values of one step, in the order of their spec ``ids``."""
        self._col_val.extend(values)
        self._col_step.extend(array("q", (step,)) * len(ids))
        self._col_id.extend(ids)

    # ----------------------------------------------------------------------- hooks

    def _on_root_pre(self, module: nn.Module, args: Any) -> None:
        self._drop_step_hooks()
        self._in_forward = False
        if not (module.training and torch.is_grad_enabled()):
            self._recording = False
            return
        self._step += 1
        self._recording = self._step % self.every == 0
        if not self._recording:
            return
        if len(self._pending_values) > _FLUSH_AT or len(self._col_val) > _FLUSH_AT:
            self._flush()
        step = self._step
        self._steps.append(step)
        self._hist_now = self.hist_every > 0 and self._n_records % self.hist_every == 0
        self._n_records += 1
        self._calls = {}
        self._params_read = False
        self._act_specs, self._act_values = [], []
        self._probes, self._deferred = [], []  # left by a forward that failed
        self._outs.clear()
        self._vers.clear()
        self._fast = None if self._hist_now else self._fplan
        self._log = [] if self._fplan is None else None  # (a histogram step keeps the plan)
        self._clear_grad_outs()  # left by a backward that failed before its end
        self._in_forward = True
        if not self._persistent:
            self._install_step_hooks()
            for h in self._opt_hooks:
                h.on()

    def _on_root_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._in_forward = False
        self._drop_step_hooks()
        if self._fast is not None and self._finish_fast():
            return  # (a replayed forward leaves nothing else to do)
        specs, values = self._act_specs, self._act_values
        self._act_specs, self._act_values = [], []
        self._emit(specs, values)
        for key, x, version in self._probes:
            (self._deferrable if x._version == version else self._mutated).add(key)
        self._probes = []
        if self._deferred:
            self._measure_deferred()
        log, self._log = self._log, None
        if log:
            self._fplan = self._forward_plan(log)
            self._followed = (self._step, self._fplan)

    def _forward_plan(self, log: list[tuple[str, str, Tensor, list[int] | None]]) -> _Plan | None:
        """The plan of the forward just logged, or None when a later one could not replay it:
        an output the kernel cannot read, or one changed in place after its layer."""
        rows: list[list[int]] = []
        if self._rec_act:
            for _, key, _, row in log:
                if row is None or key not in self._deferrable:
                    return None
                rows.append(row)
        sigs = _signature([out for _, _, out, _ in log])
        if sigs is None:
            return None
        plan = _Plan([key for _, key, _, _ in log], sigs, rows)
        plan.names = [name for name, _, _, _ in log]
        plan.acts = [self._info[name].activation for name in plan.names]
        if rows:
            take: list[int] = []
            for r, (key, row) in enumerate(zip(plan.keys, rows, strict=True)):
                ids = self._act_spec_ids(key, row[1], row[3], row[4])
                plan.ids.extend(ids)
                take += range(5 * r, 5 * r + len(ids))
            plan.gather(take)
        return plan

    def _finish_fast(self) -> bool:
        """End of a forward that followed the plan: its outputs measured in one kernel call,
        unless they no longer match the plan (fewer calls, other shapes, changed in place:
        then handed to the per-layer path, and False)."""
        fast, outs = self._fast, self._outs
        assert fast is not None
        ok = len(outs) == len(fast.keys) and [t._version for t in outs] == self._vers
        if ok:  # (the plan's outputs are float and non-empty, as the per-layer path measures)
            ok = _signature(outs) == fast.sigs
        if ok and fast.meta is not None:
            vals = fast.run(outs)
            if vals is not None:
                self._put_block(self._step, fast.ids, vals)
            ok = vals is not None
        if not ok:
            self._leave_fast()
            return False
        self._fast = None
        self._followed = (self._step, fast)
        if self._rec_grad:  # (here, in one loop: cheaper than in each leaf hook, the loop's
            # code stays in cache; nothing changed the outputs in place, so each grad_fn is
            # still the node that made it)
            for key, out in zip(fast.keys, outs, strict=True):
                if out.requires_grad:
                    self._hook_grad(key, out)
        outs.clear()
        self._vers.clear()
        return True

    def _leave_fast(self) -> None:
        """Back to the per-layer path midway through a forward (or at its end): the outputs
        followed so far are measured and their gradients hooked now if nothing changed them
        in place since their hook, else dropped for this step (their layer is measured in its
        hook from now on); a later step makes a new plan."""
        fast, self._fast, self._fplan, self._log = self._fast, None, None, None
        assert fast is not None
        step = self._step
        for name, key, act, out, version in zip(
            fast.names, fast.keys, fast.acts, self._outs, self._vers, strict=False
        ):
            if not out.is_floating_point() or out.numel() == 0:
                continue  # (not counted, measured nor hooked, as in the per-layer path)
            self._calls[name] = self._calls.get(name, 0) + 1
            if out._version == version:
                if self._rec_act:
                    self._measure_output(key, step, act, out)
                if self._rec_grad and out.requires_grad:
                    self._hook_grad(key, out)
            else:  # (its gradient too: its grad_fn is now the in-place op's)
                self._deferrable.discard(key)
                self._mutated.add(key)
        self._outs.clear()
        self._vers.clear()

    def _measure_deferred(self) -> None:
        """This forward's kept outputs, measured in one kernel call. An output changed in place
        after its hook no longer holds the layer's output: its values of this step are dropped
        and the layer is measured in its hook from now on."""
        rows = []
        ids: list[int] = []
        counts = []
        for _, key, x, version, row in self._deferred:
            if x._version != version:
                self._deferrable.discard(key)
                self._mutated.add(key)
                continue
            rows.append(row)
            sig = (key, row[1], row[3], row[4])
            row_ids = self._act_ids.get(sig) or self._act_spec_ids(*sig)
            ids += row_ids
            counts.append(len(row_ids))
        step = self._deferred[0][0]  # (one forward's)
        res = _run_fused(rows) if rows else None
        self._deferred = []  # (only now: the kernel reads the tensors these hold)
        if res is None:
            return
        res[:, 1] = np.sqrt(res[:, 1])  # ‖x‖, as the "msq" entries expect
        vals: list[float] = []
        for r, k in zip(res.tolist(), counts, strict=True):
            vals += r[:k]
        self._put_block(step, ids, vals)

    def _act_spec_ids(self, key: str, n: int, mode: int, channels: int) -> list[int]:
        """Spec ids of a kernel result row ``(Σx, ‖x‖, min, max, count)`` of layer ``key``."""
        specs = _act_specs(key, _KINDS[mode], n, channels)
        ids = self._act_ids[(key, n, mode, channels)] = [self._id(sp) for sp in specs]
        return ids

    def _on_leaf(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self._in_forward:
            return
        fast = self._fast
        if fast is not None:  # the plan's next call? (then only kept, handled at the end)
            pos = len(self._outs)
            if pos < len(fast.names) and fast.names[pos] is name and type(output) is Tensor:
                self._outs.append(
                    output
                )  # (dtype and shape: checked against the plan's at the end)
                self._vers.append(output._version)
                return
            self._leave_fast()
        out = output if type(output) is Tensor else _first_tensor(output)
        if out is None or not out.is_floating_point() or out.numel() == 0:
            self._log = None  # (a call the plan could not replay)
            return
        calls = self._calls.get(name, 0) + 1
        self._calls[name] = calls
        key = name if calls == 1 else f"{name}#{calls}"
        if key not in self._seen:
            self._seen.add(key)
            self._order.append(key)
            if calls > 1:
                base = self._info[name]
                self._info[key] = LayerInfo(key, base.kind, base.depth, base.activation)
        row = None
        if self._rec_act:
            row = self._measure_output(key, self._step, self._info[name].activation, out)
        if self._log is not None:
            if type(output) is Tensor:
                self._log.append((name, key, out, row))
            else:
                self._log = None
        if out.requires_grad and self._rec_grad:
            self._hook_grad(key, out)

    def _hook_grad(self, key: str, out: Tensor) -> None:
        """Have the gradient w.r.t. ``out`` (the output of layer ``key``) handed over."""
        step = self._step
        node = out.grad_fn
        if node is None:
            out.register_hook(partial(self._on_out_grad, key, step))
        elif out._backward_hooks is None:
            hook_output_grad(out, partial(self._on_out_grad, key, step))
        else:  # the caller's own tensor hooks are there: join them through the node
            node.register_prehook(partial(self._on_node_grad, key, step, out.output_nr))

    def _measure_output(
        self, key: str, step: int, act: ActivationKind | None, out: Tensor
    ) -> list[int] | None:
        """Measure ``out`` now, or keep it for the kernel at the end of the forward; returns its
        kernel row (None: not for the kernel)."""
        x = out if out.dtype in _FLOATS else out.float()  # (read only: no detach needed)
        deferred = False
        row = None
        if self._fused and key not in self._mutated:
            row = _fused_row(x, _MODES[act])
            if row is not None:
                if key in self._deferrable:
                    self._deferred.append((step, key, x, x._version, row))
                    deferred = True
                else:  # measured here this time; deferred later if nothing changes it
                    self._probes.append((key, x, x._version))
        if not deferred:
            self._measure_now(key, step, act, x.detach())
        if self._hist_now:  # a systematic sample of ≤ 2048 values (a copy); binned when read
            flat = x.detach().reshape(-1)
            sample = torch.nan_to_num(flat[:: max(1, flat.numel() // _HIST_SAMPLE)])
            hists = self._hists.setdefault(key, [])
            hists[1:] = []  # keep the first and the latest only
            hists.append((step, sample))
        return row

    def _measure_now(self, key: str, step: int, act: ActivationKind | None, x: Tensor) -> None:
        specs, values = self._act_specs, self._act_values
        # One pass each for Σx, ‖x‖ and (min, max), no temporaries: the std is combined in
        # float64 at read time as √(Σx²/n − mean²). Σx² is accumulated in float32, so the std
        # carries a relative error of about 1e-7·(mean/std)²: exact enough to monitor scale
        # unless |mean| > 1000·std. (A two-pass std costs an extra temporary and pass per
        # layer; torch.std_mean's Welford kernel is ~20x slower than both on CPU.)
        n = x.numel()
        units = x.shape[1] if x.ndim >= 2 else n  # ReLU units: channels (or each value)
        specs += [(step, sp) for sp in _act_specs(key, act, n, units)]
        lo, hi = torch.aminmax(x)
        values += (x.sum(), torch.linalg.vector_norm(x), lo, hi)
        if act == "relu":  # a unit is dead if ≤ 0 for every sample and position
            peak = x.amax(dim=[d for d in range(x.ndim) if d != 1]) if x.ndim >= 2 else x
            values.append(torch.count_nonzero(peak))  # ≥ 0
        elif act is not None:
            centre, half = (0.5, SAT_HIGH - 0.5) if act == "sigmoid" else (0.0, SAT_HIGH)
            values.append(torch.count_nonzero(x.sub(centre).abs_().gt_(half)))  # one temporary

    def _on_node_grad(self, key: str, step: int, nr: int, grads: tuple[Tensor | None, ...]) -> None:
        grad = grads[nr]
        if grad is not None:
            self._on_out_grad(key, step, grad)

    def _on_out_grad(self, key: str, step: int, grad: Tensor) -> None:
        if not self._go_keys:
            # runs once the whole backward pass is done, when every .grad is accumulated
            Variable._execution_engine.queue_callback(partial(self._on_backward_end, step))
        # only kept here; normed together with the parameter gradients when the backward ends
        self._go_keys.append(key)
        self._go_steps.append(step)
        self._go_grads.append(grad)
        self._go_vers.append(grad._version)

    def _clear_grad_outs(self) -> None:
        self._go_keys, self._go_steps, self._go_grads, self._go_vers = [], [], [], []

    def _on_backward_end(self, step: int) -> None:
        keys, steps, grads, vers = self._go_keys, self._go_steps, self._go_grads, self._go_vers
        self._clear_grad_outs()
        plan = self._bplan
        if (
            plan is not None
            and not self._params_read
            and keys == plan.keys
            and steps.count(step) == len(steps)
            and [g._version for g in grads] == vers
        ):
            pgrads = [p.grad for p in plan.params]
            n = len(grads)
            if plan.fplan is not None and self._followed == (step, plan.fplan):
                # This step's forward matched the plan the backward plan's forward did, so its
                # outputs have the same shapes, dtypes and devices, and autograd hands over
                # gradients of exactly those (validate_outputs): only their strides can differ.
                same = _strides(grads) == [sig[1] for sig in plan.sigs[:n]]
                same = same and _signature(pgrads) == plan.sigs[n:]  # type: ignore[arg-type]
            else:
                same = _signature(grads + pgrads) == plan.sigs  # type: ignore[operator]
            vals = plan.run(grads + pgrads) if same else None  # type: ignore[operator]
            if vals is not None:  # the backward the plan was made from, replayed
                self._params_read = True
                self._put_block(step, plan.ids, vals)
                return
        todo: list[tuple[Tensor, int, int]] = []  # (gradient, step, spec id)
        gid = self._grad_out_ids
        for key, st, g, version in zip(keys, steps, grads, vers, strict=True):
            if g._version == version:  # else changed in place after the hook: not the gradient
                i = gid.get(key)
                if i is None:
                    i = gid[key] = self._id(("grad_out_norm", key, "set", 0))
                todo.append((g, st, i))
        replayable = len(todo) == len(keys) and steps.count(step) == len(steps)
        if self._params_read:
            replayable = False
        else:  # parameter gradients once per recorded step
            self._params_read = True
            if len(self._param_ids) != len(self._flat_params):
                self._param_ids = [self._id(("grad_sq", n, "sq", 0)) for n, _ in self._flat_params]
            for (_, p), i in zip(self._flat_params, self._param_ids, strict=True):
                if p.grad is not None:
                    todo.append((p.grad, step, i))
                else:
                    replayable = False
        rows: list[list[int]] = []  # for the kernel (todo keeps the tensors alive)
        row_steps: list[int] = []
        row_ids: list[int] = []
        specs: list[tuple[int, _Spec]] = []  # for torch
        values: list[Tensor] = []
        dense: list[Tensor] = []
        dense_specs: list[tuple[int, _Spec]] = []
        fused = self._fused
        for g, st, i in todo:
            row = _flat_row(g, _SUMSQ) if fused else None
            if row is not None:
                rows.append(row)
                row_steps.append(st)
                row_ids.append(i)
            elif g.is_sparse or g.dtype not in _FLOATS:
                specs.append((st, self._specs[i]))
                values.append(_norm(g))
            else:
                dense_specs.append((st, self._specs[i]))
                dense.append(g.detach())
        if dense:
            values += torch._foreach_norm(dense)
            specs += dense_specs
        self._emit(specs, values)
        if rows:
            self._col_step.extend(row_steps)
            self._col_id.extend(row_ids)
            self._col_val.extend(np.sqrt(_run_fused(rows)[:, 1]).tolist())
        self._bplan = None
        if replayable and rows and len(rows) == len(todo):
            sigs = _signature([g for g, _, _ in todo])
            if sigs is not None:
                self._bplan = plan = _Plan(keys, sigs, rows)
                plan.params = [p for _, p in self._flat_params]
                if self._followed[0] == step:
                    plan.fplan = self._followed[1]
                plan.ids.extend(row_ids)
                plan.gather(list(range(1, 5 * len(rows), 5)))

    def _opt_plan(self, opt: torch.optim.Optimizer) -> _OptPlan:
        """Which watched parameters ``opt`` steps, split into those the kernel snapshots (with
        their table rows) and the rest; cached while the groups' parameter lists and the
        parameters' storage stay the same."""
        sig = tuple([(id(g["params"]), len(g["params"])) for g in opt.param_groups])
        plan = self._opt_plans.get(id(opt))
        if plan is not None and plan.sig == sig and plan.valid():
            return plan
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        plan = _OptPlan(sig)
        sizes = {False: 0, True: 0}  # float32 / float64 snapshot elements
        rows = []
        for n, p in self._flat_params:
            if id(p) not in ids:
                continue
            p = p.detach()
            row = _flat_row(p, _SNAPSHOT) if self._fused else None
            if row is None:
                plan.names.append(n)
                plan.params.append(p)
            else:
                is64 = bool(row[2])
                row[6] = sizes[is64]  # offset in that dtype's snapshot buffer
                sizes[is64] += row[1]
                rows.append(row)
                plan.fused_names.append(n)
                plan.fused_params.append(p)
        if rows:
            plan.snap = np.array(rows, dtype=np.int64)
            plan.delta = plan.snap.copy()
            plan.delta[:, 3] = _DELTA
            plan.ptrs = [int(r[0]) for r in rows]
            n = len(rows)
            plan.out = np.zeros((n, 5))
            plan.take, plan.root, plan.vals = _gathering(  # ‖Δw‖ (column 0), then ‖w‖
                np.r_[np.arange(0, 5 * n, 5), np.arange(1, 5 * n, 5)], np.ones(2 * n, np.bool_)
            )
            plan.bufs = tuple(
                np.empty(sizes[is64], np.float64 if is64 else np.float32) for is64 in (False, True)
            )
        self._opt_plans[id(opt)] = plan
        return plan

    def _on_opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._recording or self._opt_step == self._step:
            return
        plan = self._opt_plan(opt)
        if not plan.names and not plan.fused_names:
            return
        self._opt_step = self._step
        weights: list[Tensor] = []
        olds: list[Tensor] = []
        if plan.params:
            with torch.no_grad():  # (clones are ~2x cheaper than _foreach_mul(params, 1))
                weights = _foreach_norms(plan.params)
                olds = [p.clone() for p in plan.params]
        if plan.snap is not None:
            _fused_kernel()(plan.snap, plan.out, *plan.bufs)
        self._snapshot = (plan, olds, weights)

    def _on_opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._persistent:
            for h in self._opt_hooks:
                h.off()
        snap, self._snapshot = self._snapshot, None
        if snap is None:
            return
        plan, olds, weights = snap
        step = self._opt_step
        if plan.params:
            with torch.no_grad():
                torch._foreach_sub_(olds, plan.params)  # −Δw in place of the old weights
                updates = _foreach_norms(olds)
            specs = [(step, ("update_sq", name, "sq", 0)) for name in plan.names]
            specs += [(step, ("weight_sq", name, "sq", 0)) for name in plan.names]
            self._emit(specs, [*updates, *weights])
        if plan.snap is not None and plan.valid():  # (not when the step swapped p.data)
            if not plan.ids:
                names = plan.fused_names
                plan.ids.extend(self._id(("update_sq", n, "sq", 0)) for n in names)
                plan.ids.extend(self._id(("weight_sq", n, "sq", 0)) for n in names)
            _fused_module().replay_stats(
                _NO_PTRS, plan.delta, plan.out, plan.take, plan.root, plan.vals, *plan.bufs
            )
            self._put_block(step, plan.ids, plan.vals)

    # ----------------------------------------------------------------------- reading

    def _flush(self) -> None:
        """Sort the values recorded since the last call into :attr:`_groups` (accelerator
        values first read, in one transfer per device)."""
        if self._pending_values:
            specs, self._pending_specs = self._pending_specs, []
            values, self._pending_values = self._pending_values, []
            by_device: dict[torch.device, list[int]] = defaultdict(list)
            for i, t in enumerate(values):
                by_device[t.device].append(i)
            flat: list[float] = [0.0] * len(values)
            for idx in by_device.values():
                vals = torch.stack([values[i] for i in idx]).tolist()  # promotes int counts
                for i, v in zip(idx, vals, strict=True):
                    flat[i] = v
            self._put(specs, flat)
        if not self._col_val:
            return
        ids = np.array(self._col_id, dtype=np.int64)
        order = np.argsort(ids, kind="stable")  # (keeps each id's values in recorded order)
        ids = ids[order]
        steps = np.array(self._col_step, dtype=np.int64)[order]
        vals = np.array(self._col_val, dtype=np.float64)[order]
        del self._col_step[:], self._col_id[:], self._col_val[:]
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ids)].tolist(), strict=True):
            self._groups.setdefault(int(ids[a]), []).append((steps[a:b], vals[a:b]))

    def _spec_values(self, i: int) -> tuple[Any, Any]:
        """All ``(steps, values)`` recorded for spec id ``i`` (after :meth:`_flush`)."""
        chunks = self._groups.get(i)
        if not chunks:
            return np.zeros(0, np.int64), np.zeros(0)
        if len(chunks) > 1:
            chunks[:] = [
                (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
            ]
        return chunks[0]

    def _stored(self, metric: str, key: str) -> tuple[Any, Any]:
        """One stored metric of one layer as ``(steps, values)``, sorted by step, one value per
        step: each spec's raw values turned into the metric by its mode (see :data:`_Spec`),
        squares summed per step for "sq" (per-parameter norms of a layer in quadrature), the
        std from ‖x‖ and that step's mean for "msq", the latest value where a step has two."""
        parts_s, parts_v = [], []
        mode = "set"
        for i in self._ids_of.get((metric, key), ()):
            _, _, mode, arg = self._specs[i]
            st, v = self._spec_values(i)
            if mode == "sq":
                v = v * v
            elif mode == "dead":
                v = 1.0 - v / arg
            elif mode in ("frac", "mean"):
                v = v / arg
            elif mode == "msq":
                v = v * v / arg
            parts_s.append(st)
            parts_v.append(v)
        if not parts_s:
            return np.zeros(0, np.int64), np.zeros(0)
        st, v = np.concatenate(parts_s), np.concatenate(parts_v)
        if mode == "sq":
            st, inv = np.unique(st, return_inverse=True)
            return st, np.bincount(inv, weights=v, minlength=len(st))
        order = np.argsort(st, kind="stable")
        st, v = st[order], v[order]
        last = np.r_[st[1:] != st[:-1], True]
        st, v = st[last], v[last]
        if mode == "msq":  # E[x²] − mean² of the same step
            ms, mv = self._stored("act_mean", key)
            at = np.clip(np.searchsorted(ms, st), 0, max(len(ms) - 1, 0))
            has = ms[at] == st if len(ms) else np.zeros(len(st), bool)
            st, v = st[has], np.sqrt(np.maximum(v[has] - mv[at[has]] ** 2, 0.0))
        return st, v

    @property
    def steps(self) -> list[int]:
        """Indices of the recorded steps (0-based count of training forwards)."""
        return list(self._steps)

    @property
    def layers(self) -> list[str]:
        """Watched layers in the order they ran in the first recorded forward (later-seen
        layers appended), then parameterised layers that never ran."""
        return [*self._order, *(n for n in self._params if n not in self._seen)]

    @property
    def depth_layers(self) -> list[str]:
        """The conv/linear-like layers among :attr:`layers` (input side first)."""
        return [n for n in self.layers if self._info[n].depth and "#" not in n]

    def info(self, layer: str) -> LayerInfo:
        """What :class:`LayerInfo` says about ``layer``."""
        try:
            return self._info[layer]
        except KeyError:
            raise KeyError(
                f"no watched layer named {layer!r}; watched layers: {self.layers}"
            ) from None

    def series(self, metric: str, layers: Iterable[str] | None = None) -> dict[str, list[float]]:
        """``{layer: [value at each of self.steps]}`` for one of :data:`METRICS`; ``nan`` where
        the value was not recorded (no backward, no optimizer step, not that activation kind).
        Layers without any value for the metric are left out unless named in ``layers``."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        self._flush()
        names = self.layers if layers is None else list(layers)
        out: dict[str, list[float]] = {}
        for n in names:
            vals = self._metric_values(metric, n)
            if vals or layers is not None:
                out[n] = [vals.get(s, math.nan) for s in self._steps]
        return out

    def recorded(self, metric: str, layer: str) -> dict[int, float]:
        """``{step: value}`` of one metric for one layer, only where it was recorded."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        self._flush()
        return self._metric_values(metric, layer)

    def _metric_values(self, metric: str, layer: str) -> dict[int, float]:
        if metric in ("grad_norm", "weight_norm"):
            st, v = self._stored("grad_sq" if metric == "grad_norm" else "weight_sq", layer)
            return dict(zip(st.tolist(), np.sqrt(v).tolist(), strict=True))
        if metric == "update_ratio":
            us, uv = self._stored("update_sq", layer)
            w = dict(zip(*(a.tolist() for a in self._stored("weight_sq", layer)), strict=True))
            return {
                s: math.sqrt(u) / math.sqrt(w[s]) if w.get(s, 0) > 0 else math.inf
                for s, u in zip(us.tolist(), uv.tolist(), strict=True)
            }
        st, v = self._stored(metric, layer)
        return dict(zip(st.tolist(), v.tolist(), strict=True))

    def grad_norms(self, layers: Iterable[str] | None = None) -> dict[str, list[float]]:
        """Per-layer parameter-gradient L2 norm at each recorded step (the gradient-flow data);
        by default for :attr:`depth_layers`, input side first."""
        return self.series("grad_norm", self.depth_layers if layers is None else layers)

    def histograms(self) -> dict[str, list[tuple[int, list[float], float, float]]]:
        """Activation histograms ``(step, counts, low, high)`` per layer: the first recorded
        step and the latest histogram step (every ``hist_every`` recorded steps)."""
        out = {}
        for k, hs in self._hists.items():
            out[k] = []
            for step, sample in hs:
                lo, hi = torch.aminmax(sample)
                out[k].append((step, _histogram(sample, lo, hi).tolist(), float(lo), float(hi)))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Long-format records ``{"step", "layer", "kind", <metric>: value, ...}`` — one per
        layer and recorded step that has any value."""
        series = {m: self.series(m) for m in METRICS}
        rows = []
        for i, step in enumerate(self._steps):
            for layer in self.layers:
                vals = {m: series[m][layer][i] for m in METRICS if layer in series[m]}
                if any(not math.isnan(v) for v in vals.values()):
                    row: dict[str, Any] = {"step": step, "layer": layer}
                    row["kind"] = self._info[layer].kind
                    row.update({m: vals.get(m, math.nan) for m in METRICS})
                    rows.append(row)
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` to ``path`` as CSV and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["step", "layer", "kind", *METRICS])
            w.writeheader()
            w.writerows(self.rows())
        return path

    # ----------------------------------------------------------------------- judging, showing

    def verdict(self, **thresholds: float) -> list[Finding]:
        """Findings about the recorded run, most severe first (see
        :func:`normkit.diagnostics.diagnose` for what is checked and the thresholds)."""
        from normkit.diagnostics._verdict import diagnose

        return diagnose(self, **thresholds)

    def print(
        self, *, findings: Sequence[Finding] | None = None, console: Console | None = None
    ) -> None:
        """Print the per-layer summary table and the findings (``verdict()`` by default)."""
        from normkit.diagnostics._report import print_report

        print_report(self, self.verdict() if findings is None else findings, console=console)

    def plot(self, path: str | Path) -> Path:
        """Save the gradient-flow figure (per-layer gradient norms per step, log scale; update
        ratios; activation histograms) as PNG/SVG/PDF (by suffix) and return the path."""
        from normkit.diagnostics._report import plot_recorder

        return plot_recorder(self, path)

    def to_html(self, path: str | Path, *, findings: Sequence[Finding] | None = None) -> Path:
        """Write a self-contained HTML report (findings, per-layer table, figure embedded as
        base64 PNG) and return the path."""
        from normkit.diagnostics._report import html_report

        return html_report(self, path, self.verdict() if findings is None else findings)


def watch(
    model: nn.Module,
    *,
    every: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    hist_every: int = 20,
    record: Collection[str] = RECORD,
) -> Recorder:
    """Record per-layer activation and gradient statistics of ``model`` while it trains.

    Every leaf module is watched; for each recorded step (``every``-th training forward) it
    stores the output's mean/std/min/max, the dead-unit fraction of ReLU layers, the saturated
    fraction of sigmoid/tanh layers, the L2 norm of the gradient w.r.t. the output and of the
    gradient of the layer's own parameters and, when an optimizer steps (any optimizer holding
    the model's parameters, or only ``optimizer`` if given), the update-to-weight ratio
    ‖Δw‖/‖w‖. ``hist_every`` recorded steps apart an activation histogram is kept (0: never).
    ``record`` picks the groups (:data:`RECORD`): ``"activations"`` (mean/std/min/max,
    dead/saturated fractions, histograms), ``"gradients"`` (output- and parameter-gradient
    norms: the gradient-flow data) and ``"updates"`` (weight norm, update ratio); recording
    fewer costs less per step (see the README's overhead table).

    Vanishing gradients: the gradient reaching layer ``l`` is the product of the Jacobians of
    the layers above it, so it shrinks geometrically when those have gain < 1 (Hochreiter 1991;
    Bengio, Simard & Frasconi 1994; Glorot & Bengio 2010) — :meth:`Recorder.verdict` reads it
    off the recorded norms. Outputs and gradients of the watched model are bit-identical to an
    unwatched one; all hooks go away on :meth:`Recorder.close` / leaving the ``with`` block.

    >>> with watch(model, every=10) as rec:
    ...     train(model, steps=100)
    >>> rec.verdict()                      # [Finding(code="vanishing-gradients", ...), ...]
    >>> rec.plot("gradient_flow.png")
    """
    return Recorder(model, every=every, optimizer=optimizer, hist_every=hist_every, record=record)
