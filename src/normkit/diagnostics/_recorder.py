"""``watch(model)``: per-layer activation and gradient statistics recorded during training.

Public hooks only. The model's forward pre-hook (always on) counts the steps; a recorded step
(every ``every``-th training forward) registers, for that step only, a forward hook per leaf
module, a forward pre-hook per normalization layer, a forward hook on the model and the
optimizer's step pre/post hooks. A leaf hook measures its output and registers a tensor hook
(``Tensor.register_hook``) on it for the gradient w.r.t. that output; a multi-grad hook
(``torch.autograd.graph.register_multi_grad_hook``) over the parameters receives the parameter
gradients of the step's backward. The graph is left untouched: a watched model computes
bit-identical outputs and gradients, and in-place ops after a layer (``ReLU(inplace=True)``)
keep working (the layer's output is measured in its hook, before they run).

Measuring. Each statistic is a torch reduction left on the device as a 0-d tensor (per-channel
statistics of normalization layers: small vectors); at the start of the next recorded step, or
when read, all of them go to the host in one ``torch.stack``/``torch.cat`` per device and are
turned into the metrics in float64. No hook synchronises an accelerator.

Storing. The metrics go into three typed columns (step, metric id, value): no per-value Python
object for the garbage collector to scan.
"""

from __future__ import annotations

import csv
import math
import weakref
from array import array
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from normkit._stats import accumulation_dtype
from normkit.diagnostics import _instruments
from normkit.diagnostics._data import (
    METRICS,
    Curvature,
    GradientNoise,
    LayerInfo,
    Recording,
    values_by_spec,
)
from normkit.diagnostics._findings import Finding
from normkit.diagnostics._modules import (
    SAT_HIGH,
    ActivationKind,
    activation_kind,
    is_depth_layer,
    leaf_modules,
    norm_kind,
)
from normkit.diagnostics._report import html_report, plot_recorder, print_report
from normkit.diagnostics._verdict import diagnose

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["METRICS", "RECORD", "LayerInfo", "Recorder", "watch"]

RECORD: tuple[str, ...] = ("activations", "gradients", "updates")
"""What :func:`watch` can record (all by default); see its ``record`` argument."""
# pass-through modules: their output is their input (or a view of it); nothing new to measure
_PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten, nn.Identity)
_HIST_SAMPLE = 2048
_FLOATS = (torch.float32, torch.float64)
_DEAD_STD = 1e-3  # a BN channel whose output std is below this is dead

# A pending entry: (what, key, step, meta, tensors it owns in the scalar list, in the vector
# list); turned into metrics by Recorder._flush.
_Entry = tuple[str, str, int, Any, int, int]


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


def _norm(t: Tensor) -> Tensor:
    """The L2 norm of ``t`` (of its stored values when sparse), accumulated in float32 or
    float64."""
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype in _FLOATS:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dtype=accumulation_dtype(t.dtype))


def _group_sq(norms: list[float], sizes: list[int]) -> list[float]:
    """Σ norm² of consecutive groups of ``norms`` (``sizes``: how many per group)."""
    out, i = [], 0
    for n in sizes:
        out.append(sum(v * v for v in norms[i : i + n]))
        i += n
    return out


def _to_host(ts: list[Tensor], join: Callable[[list[Tensor]], Tensor]) -> list[float]:
    """The values of ``ts`` as floats, joined with ``join`` (torch.stack for 0-d tensors,
    torch.cat for vectors; both promote dtypes) and copied once per device."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(ts):
        by_device[t.device].append(i)
    if len(by_device) == 1:
        return join(ts).tolist()
    parts: list[list[float]] = [[] for _ in ts]
    for idx in by_device.values():
        flat = join([ts[i] for i in idx]).tolist()
        for i in idx:
            n = ts[i].numel()
            parts[i], flat = flat[:n], flat[n:]
    return [v for p in parts for v in p]


def _warmup(bn: nn.Module) -> int:
    """Updates after which a batch norm's running statistics forgot their initial values to
    5% (3/momentum for an exponential average; Keras-convention momenta count as 1 − m)."""
    m = getattr(bn, "momentum", None)
    if not isinstance(m, float) or not 0 < m < 1:
        return 0  # (a cumulative average: no start-up bias)
    conv = getattr(bn, "momentum_convention", None) or getattr(bn, "convention", None)
    return math.ceil(3 / (1 - m if conv == "keras" else m))


class Recorder:
    """Per-layer statistics of a model during training; create it with :func:`watch`.

    A *step* is one forward call of the watched model in training mode with gradients enabled
    (eval and ``no_grad`` forwards are not counted); steps ``0, every, 2·every, …`` are recorded.
    Read the results with :attr:`steps`, :attr:`layers`, :meth:`series` (any name of
    :data:`METRICS`), :meth:`grad_norms`, :meth:`rows`/:meth:`to_csv` or :meth:`recording`;
    measure more on demand with :meth:`curvature` and :meth:`gradient_noise`; judge with
    :meth:`verdict`; show with :meth:`print`, :meth:`plot` and :meth:`to_html`. :meth:`close`
    (or leaving the ``with`` block) removes every hook.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with watch(model, every=1) as rec:
    ...     for _ in range(3):
    ...         model(torch.randn(16, 4)).sum().backward()
    >>> rec.steps, rec.layers
    ([0, 1, 2], ['0', '1', '2'])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 10,
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
        self._rec_upd = "updates" in record
        self._optimizer = optimizer
        leaves = leaf_modules(model)
        self._leaves = [(n, m) for n, m in leaves if not isinstance(m, _PASS_THROUGH)]
        self._norms = [(n, m) for n, m in self._leaves if norm_kind(m) is not None]
        self._info = {
            n: LayerInfo(n, type(m).__name__, is_depth_layer(m), activation_kind(m), norm_kind(m))
            for n, m in leaves
        }
        self._params = {
            n: ps for n, m in leaves if (ps := [p for p in m.parameters(recurse=False)])
        }
        self._flat_params = [(n, p) for n, ps in self._params.items() for p in ps]
        self._init: dict[int, Tensor] = {}  # id(param) → its values when watching started
        self._init_sq: dict[str, float] = {}  # layer → ‖w₀‖²
        if self._rec_upd:
            with torch.no_grad():
                for n, ps in self._params.items():
                    self._init.update((id(p), p.detach().clone()) for p in ps)
                    self._init_sq[n] = sum(float(_norm(p)) ** 2 for p in ps)
        self._order: list[str] = []
        self._steps: list[int] = []
        self._step = -1
        self._paused = False
        self._n_records = 0
        self._hist_now = False
        self._calls: dict[str, int] = {}
        self._samples: dict[str, list[tuple[int, Tensor]]] = {}
        self._bn_counts: dict[str, int] = {}  # values per channel a batch norm normalizes
        self._bn_warmup: dict[str, int] = {}  # steps its running statistics take to warm up
        self._curvature: list[Curvature] = []
        self._noise: list[GradientNoise] = []
        self._last_opt: weakref.ref[torch.optim.Optimizer] | None = None
        # this step's measurements, read to the host at once (see _flush)
        self._entries: list[_Entry] = []
        self._scalars: list[Tensor] = []
        self._vectors: list[Tensor] = []
        # the stepping optimizer, the step, its watched parameters, their copies, and per layer
        # (names, parameter counts, [Σw², Σ(w − w₀)²])
        self._snapshot: tuple[Any, int, list[tuple[str, Tensor]], list[Tensor], Any] | None
        self._snapshot = None
        # the stored metrics: (step, metric id, value) columns
        self._col_step = array("q")
        self._col_id = array("q")
        self._col_val = array("d")
        self._ids: dict[tuple[str, str], int] = {}
        self._cache: tuple[int, Recording] | None = None
        self._step_handles: list[RemovableHandle] = []  # on for a recorded forward only
        self._grad_handle: RemovableHandle | None = None  # until the next step starts
        self._opt_handles: list[RemovableHandle] = []  # until the next optimizer step ends
        self._handles = [model.register_forward_pre_hook(self._on_forward_start)]
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
        self._remove_step_hooks()
        if self._grad_handle is not None:
            self._grad_handle.remove()
            self._grad_handle = None
        self._remove_opt_hooks()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._closed = True
        self._flush()

    def _remove_step_hooks(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()

    def _remove_opt_hooks(self) -> None:
        for h in self._opt_handles:
            h.remove()
        self._opt_handles.clear()
        self._snapshot = None

    # ----------------------------------------------------------------------- hooks

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        if self._step_handles:
            self._remove_step_hooks()  # (a recorded forward that failed)
        if self._paused or not (module.training and torch.is_grad_enabled()):
            return
        if self._grad_handle is not None:  # (the last recorded step's backward is over)
            self._grad_handle.remove()
            self._grad_handle = None
        self._step += 1
        if self._step % self.every:
            return
        self._flush()
        self._steps.append(self._step)
        self._hist_now = self.hist_every > 0 and self._n_records % self.hist_every == 0
        self._n_records += 1
        self._calls = {}
        hooks = self._step_handles
        if self._rec_act or self._rec_grad:
            hooks += [m.register_forward_hook(partial(self._on_leaf, n)) for n, m in self._leaves]
        if self._rec_act:
            hooks += [
                m.register_forward_pre_hook(partial(self._on_norm, n)) for n, m in self._norms
            ]
        hooks.append(module.register_forward_hook(self._on_forward_end))
        if self._rec_upd and not self._opt_handles:
            if self._optimizer is None:  # (any optimizer: torch's global step hooks)
                pre, post = register_optimizer_step_pre_hook, register_optimizer_step_post_hook
            else:
                pre = self._optimizer.register_step_pre_hook
                post = self._optimizer.register_step_post_hook
            self._opt_handles += [pre(self._on_opt_pre), post(self._on_opt_post)]

    def _on_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._remove_step_hooks()  # (the root's own hook too: torch iterates over a copy)
        params = [p for _, p in self._flat_params if p.requires_grad]
        if self._rec_grad and params:
            self._grad_handle = torch.autograd.graph.register_multi_grad_hook(
                params, partial(self._on_param_grads, self._step, params), mode="all"
            )

    def _key(self, name: str, calls: int) -> str:
        key = name if calls == 1 else f"{name}#{calls}"
        if key not in self._info:
            base = self._info[name]
            self._info[key] = LayerInfo(key, base.kind, base.depth, base.activation, base.norm)
        if key not in self._order:
            self._order.append(key)
        return key

    def _on_leaf(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        out = _first_tensor(output)
        if out is None or not out.is_floating_point() or out.numel() == 0:
            return
        calls = self._calls[name] = self._calls.get(name, 0) + 1
        key = self._key(name, calls)
        if self._rec_act:
            self._measure_output(key, self._info[name].activation, out.detach())
        if self._rec_grad and out.requires_grad:
            out.register_hook(partial(self._on_out_grad, key, self._step))

    def _measure_output(self, key: str, act: ActivationKind | None, x: Tensor) -> None:
        # Σx and ‖x‖ (the std is combined in float64 when read as √(‖x‖²/n − mean²): exact
        # enough to monitor scale unless |mean| > 1000·std), min and max, then the dead or
        # saturated count: one reduction each, no temporaries but the saturation test's.
        x = x if x.dtype in _FLOATS else x.float()
        n = x.numel()
        units = x.shape[1] if x.ndim >= 2 else n  # ReLU units: channels (or each value)
        lo, hi = torch.aminmax(x)
        vals = [x.sum(), torch.linalg.vector_norm(x), lo, hi]
        if act == "relu":  # a unit is dead if ≤ 0 for every sample and position
            peak = x.amax(dim=[d for d in range(x.ndim) if d != 1]) if x.ndim >= 2 else x
            vals.append(torch.count_nonzero(peak))
        elif act is not None:
            centre, half = (0.5, SAT_HIGH - 0.5) if act == "sigmoid" else (0.0, SAT_HIGH)
            vals.append(torch.count_nonzero(x.sub(centre).abs_().gt_(half)))
        self._add("act", key, (n, units, act), vals)
        if self._hist_now:  # a systematic sample of ≤ 2048 values (a copy); binned when read
            flat = x.reshape(-1)
            sample = torch.nan_to_num(flat[:: max(1, flat.numel() // _HIST_SAMPLE)])
            kept = self._samples.setdefault(key, [])
            kept[1:] = []  # keep the first and the latest only
            kept.append((self._step, sample))

    def _on_norm(self, name: str, module: nn.Module, args: Any) -> None:
        x = _first_tensor(args)
        if x is None or not x.is_floating_point() or x.numel() == 0:
            return
        key = self._key(name, self._calls.get(name, 0) + 1)  # (the call about to run)
        x = x.detach()
        w = getattr(module, "weight", None)
        vecs = [w.detach().reshape(-1).clone()] if isinstance(w, Tensor) and w.numel() else []
        rm, rv = getattr(module, "running_mean", None), getattr(module, "running_var", None)
        batch = (
            module.training
            and x.ndim >= 2
            and isinstance(rm, Tensor)
            and isinstance(rv, Tensor)
            and rm.numel() == rv.numel() == x.shape[1]
        )
        scalars = []
        if batch:  # per channel the mean and ‖x − mean‖ (two passes: torch.var_mean is ~20x
            # slower on CPU), and the running statistics before this step updates them
            dims = [d for d in range(x.ndim) if d != 1]
            mean = x.mean(dims, keepdim=True)
            vecs += [mean.reshape(-1), torch.linalg.vector_norm(x - mean, dim=dims)]
            vecs += [cast(Tensor, rm).detach().clone(), cast(Tensor, rv).detach().clone()]
            self._bn_counts[key] = x.numel() // x.shape[1]
            self._bn_warmup[key] = _warmup(module)
        else:
            scalars.append(torch.linalg.vector_norm(x))
        eps = float(getattr(module, "eps", 1e-5))
        meta = (x.numel(), len(vecs) in (1, 5), batch, eps)
        self._add("norm", key, meta, scalars, vecs)

    def _on_out_grad(self, key: str, step: int, grad: Tensor) -> None:
        self._add("grad_out", key, None, [_norm(grad)], step=step)

    def _on_param_grads(
        self, step: int, params: Sequence[Tensor], grads: Sequence[Tensor | None]
    ) -> None:
        by_param = {id(p): g for p, g in zip(params, grads, strict=True)}
        ts: list[Tensor] = []
        layers, sizes = [], []
        for layer, ps in self._params.items():
            gs = [g for p in ps if (g := by_param.get(id(p))) is not None]
            if gs:
                ts += gs
                layers.append(layer)
                sizes.append(len(gs))
        if ts:
            self._add("grad", "", (layers, sizes), [_norm(g) for g in ts], step=step)

    def _on_opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._snapshot is not None:
            return
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        watched: list[tuple[str, Tensor]] = [(n, p) for n, p in self._flat_params if id(p) in ids]
        if not watched:
            return  # (another model's optimizer)
        self._last_opt = weakref.ref(opt)
        names = [n for n, _ in watched]
        layers = list(dict.fromkeys(names))  # (in order: _flat_params is grouped by layer)
        sizes = [names.count(n) for n in layers]
        with torch.no_grad():
            olds = [p.detach().clone() for _, p in watched]
            norms = [_norm(o) for o in olds]
            norms += [_norm(o - self._init[id(p)]) for (_, p), o in zip(watched, olds, strict=True)]
        self._snapshot = (opt, self._steps[-1], watched, olds, (layers, sizes, norms))

    def _on_opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        snap = self._snapshot
        if snap is None or snap[0] is not opt:
            return
        _, step, watched, olds, (layers, sizes, norms) = snap
        with torch.no_grad():  # (−Δw in place of the old weights)
            norms += [_norm(o.sub_(p.detach())) for (_, p), o in zip(watched, olds, strict=True)]
        self._add("update", "", (layers, sizes), norms, step=step)
        self._remove_opt_hooks()

    # ----------------------------------------------------------------------- storing

    def _add(
        self,
        what: str,
        key: str,
        meta: Any,
        scalars: list[Tensor],
        vectors: Sequence[Tensor] = (),
        *,
        step: int | None = None,
    ) -> None:
        self._entries.append(
            (what, key, self._step if step is None else step, meta, len(scalars), len(vectors))
        )
        self._scalars += scalars
        self._vectors += vectors

    def _put(self, step: int, metric: str, key: str, value: float) -> None:
        i = self._ids.get((metric, key))
        if i is None:
            i = self._ids[(metric, key)] = len(self._ids)
        self._col_step.append(step)
        self._col_id.append(i)
        self._col_val.append(value)

    def _flush(self) -> None:
        """Read this step's measurements to the host (one join per device) and store them as
        metrics."""
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        scalars = _to_host(self._scalars, torch.stack)
        vectors = _to_host(self._vectors, torch.cat) if self._vectors else []
        lens = [v.numel() for v in self._vectors]
        self._scalars, self._vectors = [], []
        s = vi = vpos = 0
        put = self._put
        for what, key, step, meta, ns, nv in entries:
            vals = scalars[s : s + ns]
            s += ns
            vecs = []
            for length in lens[vi : vi + nv]:
                vecs.append(vectors[vpos : vpos + length])
                vpos += length
            vi += nv
            if what == "act":
                n, units, act = meta
                mean = vals[0] / n
                put(step, "act_mean", key, mean)
                put(step, "act_std", key, math.sqrt(max(vals[1] ** 2 / n - mean**2, 0.0)))
                put(step, "act_min", key, vals[2])
                put(step, "act_max", key, vals[3])
                if act == "relu":
                    put(step, "dead_frac", key, 1.0 - vals[4] / units)
                elif act is not None:
                    put(step, "saturated_frac", key, vals[4] / n)
                if self._info[key].norm is not None:
                    put(step, "norm_out_rms", key, vals[1] / math.sqrt(n))
            elif what == "grad_out":
                put(step, "grad_out_norm", key, vals[0])
            elif what == "grad":
                for layer, sq in zip(meta[0], _group_sq(vals, meta[1]), strict=True):
                    put(step, "grad_norm", layer, math.sqrt(sq))
            elif what == "norm":
                self._put_norm(step, key, meta, vals, vecs)
            elif what == "update":
                k = len(vals) // 3
                sqs = [_group_sq(vals[i * k : (i + 1) * k], meta[1]) for i in range(3)]
                self._put_update(step, meta[0], *sqs)

    def _put_norm(
        self, step: int, key: str, meta: Any, vals: list[float], vecs: list[list[float]]
    ) -> None:
        n, has_weight, batch, eps = meta
        if has_weight:
            w = vecs[0]
            self._put(step, "gamma_min", key, min(w))
            self._put(step, "gamma_max", key, max(w))
        if not batch:
            self._put(step, "norm_in_rms", key, vals[0] / math.sqrt(n))
            return
        mean, dev, rm, rv = vecs[-4:]
        m = n // len(mean)  # values per channel
        var = [d * d / m for d in dev]
        rms = math.sqrt(sum(v + u * u for v, u in zip(var, mean, strict=True)) / len(mean))
        self._put(step, "norm_in_rms", key, rms)
        lag, dead = 0.0, 0
        for c in range(len(mean)):
            sb, sr = math.sqrt(var[c] + eps), math.sqrt(rv[c] + eps)
            lag += (sb / sr - 1.0) ** 2 + ((mean[c] - rm[c]) / sr) ** 2
            gamma = abs(vecs[0][c]) if has_weight and len(vecs[0]) == len(mean) else 1.0
            dead += gamma * math.sqrt(var[c]) / sb < _DEAD_STD
        self._put(step, "bn_stat_lag", key, math.sqrt(lag / len(mean)))
        self._put(step, "bn_dead_frac", key, dead / len(mean))

    def _put_update(
        self, step: int, layers: list[str], w2: list[float], d2: list[float], u2: list[float]
    ) -> None:
        """Per layer, from its sums of squares: the weight norm before the step, ‖Δw‖/‖w‖ and
        ‖w − w₀‖/‖w₀‖."""
        for layer, *sq in zip(layers, w2, d2, u2, strict=True):
            w, d, u, w0 = map(math.sqrt, (*sq, self._init_sq[layer]))
            self._put(step, "weight_norm", layer, w)
            self._put(step, "update_ratio", layer, u / w if w > 0 else math.inf)
            self._put(step, "init_distance", layer, d / w0 if w0 > 0 else math.inf)

    # ----------------------------------------------------------------------- reading

    def recording(self) -> Recording:
        """The recorded run as a :class:`~normkit.diagnostics.Recording` (what verdicts and
        reports read)."""
        self._flush()
        size = len(self._col_val) + len(self._curvature) + len(self._noise) + len(self._steps)
        if self._cache is None or self._cache[0] != size:
            by_id = values_by_spec(self._col_id, self._col_step, self._col_val)
            values = {spec: by_id[i] for spec, i in self._ids.items() if i in by_id}
            ran = set(self._order)
            self._cache = (
                size,
                Recording(
                    steps=list(self._steps),
                    layers=[*self._order, *(n for n in self._params if n not in ran)],
                    infos=dict(self._info),
                    values=values,
                    samples={k: list(v) for k, v in self._samples.items()},
                    curvature=list(self._curvature),
                    noise=list(self._noise),
                    bn_counts=dict(self._bn_counts),
                    bn_warmup=dict(self._bn_warmup),
                    every=self.every,
                    model_name=type(self.model).__name__,
                ),
            )
        return self._cache[1]

    @property
    def steps(self) -> list[int]:
        """Indices of the recorded steps (0-based count of training forwards)."""
        return list(self._steps)

    @property
    def layers(self) -> list[str]:
        """Watched layers in the order they ran in the first recorded forward (later-seen
        layers appended), then parameterised layers that never ran."""
        return self.recording().layers

    @property
    def depth_layers(self) -> list[str]:
        """The conv/linear-like layers among :attr:`layers` (input side first)."""
        return self.recording().depth_layers

    def info(self, layer: str) -> LayerInfo:
        """What :class:`LayerInfo` says about ``layer``."""
        return self.recording().info(layer)

    def series(self, metric: str, layers: Iterable[str] | None = None) -> dict[str, list[float]]:
        """``{layer: [value at each of self.steps]}`` for one of :data:`METRICS`; ``nan`` where
        the value was not recorded (no backward, no optimizer step, not that activation kind).
        Layers without any value for the metric are left out unless named in ``layers``."""
        return self.recording().series(metric, layers)

    def recorded(self, metric: str, layer: str) -> dict[int, float]:
        """``{step: value}`` of one metric for one layer, only where it was recorded."""
        return self.recording().recorded(metric, layer)

    def grad_norms(self, layers: Iterable[str] | None = None) -> dict[str, list[float]]:
        """Per-layer parameter-gradient L2 norm at each recorded step (the gradient-flow data);
        by default for :attr:`depth_layers`, input side first."""
        return self.series("grad_norm", self.depth_layers if layers is None else layers)

    def histograms(self) -> dict[str, list[tuple[int, list[float], float, float]]]:
        """Activation histograms ``(step, counts, low, high)`` per layer: the first recorded
        step and the latest histogram step (every ``hist_every`` recorded steps)."""
        return self.recording().histograms()

    def rows(self) -> list[dict[str, Any]]:
        """Long-format records ``{"step", "layer", "kind", <metric>: value, ...}`` — one per
        layer and recorded step that has any value."""
        return self.recording().rows()

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` to ``path`` as CSV and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["step", "layer", "kind", *METRICS])
            w.writeheader()
            w.writerows(self.rows())
        return path

    # ----------------------------------------------------------------------- on demand

    def _paused_run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (which calls the model) without counting or recording its forwards."""
        self._paused = True
        try:
            return fn()
        finally:
            self._paused = False

    def curvature(
        self,
        loss_fn: Callable[[Any, Any], Tensor],
        batch: tuple[Any, Any],
        *,
        iters: int = 50,
        tol: float = 1e-4,
        lr: float | None = None,
    ) -> Curvature:
        """The top Hessian eigenvalue of ``loss_fn(model(inputs), targets)`` on ``batch =
        (inputs, targets)`` and the learning-rate bound 2(1 + β)/λ it sets, kept for
        :meth:`verdict` (see :func:`normkit.diagnostics.top_hessian_eigenvalue`). The
        learning rate and momentum are the last stepping optimizer's (or ``watch``'s
        ``optimizer``), ``lr`` overrides; the model's parameters, buffers and mode are left as
        they were.

        >>> import torch.nn.functional as F
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> from normkit.diagnostics import watch
        >>> with watch(model) as rec:
        ...     c = rec.curvature(F.cross_entropy, (x, y), lr=0.1)
        >>> c.lr, c.bound == 2 / abs(c.eigenvalue)
        (0.1, True)
        """
        opt = self._optimizer or (self._last_opt() if self._last_opt is not None else None)
        group = opt.param_groups[0] if opt is not None else {}
        momentum = float(group.get("momentum", 0.0) or 0.0)
        if lr is None and "lr" in group:
            lr = float(group["lr"])
        lam, iterations = self._paused_run(
            lambda: _instruments.top_hessian_eigenvalue(
                self.model, loss_fn, batch, iters=iters, tol=tol
            )
        )
        bound = 2 * (1 + momentum) / abs(lam) if lam != 0 else math.inf
        result = Curvature(lam, iterations, max(self._step, 0), lr, momentum, bound)
        self._curvature.append(result)
        return result

    def gradient_noise(
        self, loss_fn: Callable[[Any, Any], Tensor], batch: tuple[Any, Any], *, groups: int = 8
    ) -> GradientNoise:
        """Gradient signal-to-noise per layer from ``groups`` micro-batch gradients of ``batch
        = (inputs, targets)``, kept for :meth:`verdict` (see
        :func:`normkit.diagnostics.gradient_noise`). Parameters, buffers and ``.grad`` are left
        as they were.

        >>> import torch.nn.functional as F
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> from normkit.diagnostics import watch
        >>> with watch(model) as rec:
        ...     g = rec.gradient_noise(F.cross_entropy, (x, y), groups=8)
        >>> g.batch, g.groups
        (32, 8)
        """
        result = self._paused_run(
            lambda: _instruments.gradient_noise(
                self.model, loss_fn, batch, groups=groups, layers=self._params
            )
        )
        result = GradientNoise(max(self._step, 0), *result)
        self._noise.append(result)
        return result

    # ----------------------------------------------------------------------- judging, showing

    def verdict(self, **thresholds: float) -> list[Finding]:
        """Findings about the recorded run, most severe first (see
        :func:`normkit.diagnostics.diagnose` for what is checked and the thresholds)."""
        return diagnose(self.recording(), **thresholds)

    def print(
        self, *, findings: Sequence[Finding] | None = None, console: Console | None = None
    ) -> None:
        """Print the per-layer summary table and the findings (``verdict()`` by default)."""
        print_report(
            self.recording(), self.verdict() if findings is None else findings, console=console
        )

    def plot(self, path: str | Path) -> Path:
        """Save the gradient-flow figure (per-layer gradient norms per step, log scale; update
        ratios; activation histograms) as PNG/SVG/PDF (by suffix) and return the path."""
        return plot_recorder(self.recording(), path)

    def to_html(self, path: str | Path, *, findings: Sequence[Finding] | None = None) -> Path:
        """Write a self-contained HTML report (findings, per-layer table, one figure per
        instrument embedded as base64 PNG) and return the path."""
        return html_report(self.recording(), path, self.verdict() if findings is None else findings)


def watch(
    model: nn.Module,
    *,
    every: int = 10,
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
    ‖Δw‖/‖w‖ and the distance from the weights at the start ‖w − w₀‖/‖w₀‖. Normalization layers
    also get a health timeline (:data:`~normkit.diagnostics.NORM_METRICS`: input/output scale,
    γ range, and for batch norms the lag of the running statistics behind the batch's and the
    dead channels). ``hist_every`` recorded steps apart an activation histogram is kept (0:
    never). ``record`` picks the groups (:data:`RECORD`): ``"activations"`` (output
    statistics, norm health, histograms), ``"gradients"`` (output- and parameter-gradient
    norms: the gradient-flow data) and ``"updates"`` (weight norm, update ratio, distance from
    the start; it keeps a copy of the parameters as they were when ``watch`` started, on their
    device: leave ``"updates"`` out where that memory matters). :meth:`Recorder.curvature` and :meth:`Recorder.gradient_noise` measure the
    loss's sharpness and the gradient noise on demand.

    Vanishing gradients: the gradient reaching layer ``l`` is the product of the Jacobians of
    the layers above it, so it shrinks geometrically when those have gain < 1 (Hochreiter 1991;
    Bengio, Simard & Frasconi 1994; Glorot & Bengio 2010) — :meth:`Recorder.verdict` reads it
    off the recorded norms. Outputs and gradients of the watched model are bit-identical to an
    unwatched one; all hooks go away on :meth:`Recorder.close` / leaving the ``with`` block.
    The parameter gradients recorded are those of the recorded step's backward (with gradient
    accumulation: that micro-batch's, not the accumulated ``.grad``).

    >>> from normkit.examples.models import deep_mlp
    >>> model = deep_mlp(30)                       # 30 sigmoid layers: gradients vanish
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with watch(model, every=5) as rec:
    ...     for _ in range(10):
    ...         loss = model(torch.randn(32, 64)).square().mean()
    ...         opt.zero_grad()
    ...         loss.backward()
    ...         opt.step()
    >>> [f.code for f in rec.verdict() if f.code == "vanishing-gradients"]
    ['vanishing-gradients']
    """
    return Recorder(model, every=every, optimizer=optimizer, hist_every=hist_every, record=record)
