"""``watch(model)``: per-layer activation and gradient statistics recorded during training.

Public hooks only. The model's forward pre-hook (always on) counts the steps; a recorded step
(every ``every``-th training forward) registers, for that step only, a forward hook per leaf
module, a forward pre-hook per normalization layer, a forward hook on the model and the
optimizer's step pre/post hooks. A leaf hook measures its output and registers a tensor hook
(``Tensor.register_hook``) on it for the gradient w.r.t. that output; a pre-hook on each
parameter's gradient accumulator (``torch.autograd.graph.get_gradient_edge``) receives its
gradient of the step's backward before it is accumulated into ``.grad`` and keeps no reference
to it, so torch's ``AccumulateGrad`` still takes the gradient over without a copy (a
multi-grad hook holds the gradients until all are there, which makes it copy every one). The
accumulator lives as long as the step's graph: a tensor hook on the parameter instead would
leave torch calling into Python for it on every later backward, even once removed (~1% of a
small model's step). The graph is left untouched: a watched model computes bit-identical outputs and
gradients, and in-place ops after a layer (``ReLU(inplace=True)``) keep working (the layer's
output is measured in its hook, before they run).

Each statistic is a torch reduction left on the device (:mod:`~normkit.diagnostics._store`
reads them to the host in one go and keeps the metrics); the update statistics come from flat
copies of the weights (:mod:`~normkit.diagnostics._updates`). No hook synchronises an
accelerator.
"""

from __future__ import annotations

import csv
import math
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from normkit.diagnostics import _instruments
from normkit.diagnostics._data import METRICS, Curvature, GradientNoise, LayerInfo, Recording
from normkit.diagnostics._findings import Finding
from normkit.diagnostics._measure import (
    first_tensor,
    norm_stats,
    output_stats,
    tensor_norm,
    warmup,
)
from normkit.diagnostics._modules import activation_kind, is_depth_layer, leaf_modules, norm_kind
from normkit.diagnostics._report import html_report, plot_recorder, print_report
from normkit.diagnostics._store import MAX_PENDING, Store
from normkit.diagnostics._updates import Snapshot, Updates
from normkit.diagnostics._verdict import diagnose

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["METRICS", "RECORD", "LayerInfo", "Recorder", "watch"]

RECORD: tuple[str, ...] = ("activations", "gradients", "updates")
"""What :func:`watch` can record (all by default); see its ``record`` argument."""
# pass-through modules: their output is their input (or a view of it); nothing new to measure
_PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten, nn.Identity)
_HIST_SAMPLE = 2048


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
        self._updates = Updates(self._flat_params) if self._rec_upd else None
        # the hooks a recorded step registers, made once
        self._leaf_hooks = [(m, partial(self._on_leaf, n)) for n, m in self._leaves]
        self._norm_hooks = [(m, partial(self._on_norm, n)) for n, m in self._norms]
        self._order: list[str] = []
        self._seen: set[str] = set()
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
        self._store = Store()
        # the stepping optimizer, the step and the weights' snapshot before it
        self._snapshot: tuple[torch.optim.Optimizer, int, Snapshot] | None = None
        self._cache: tuple[int, Recording] | None = None
        self._step_handles: list[RemovableHandle] = []  # on for a recorded forward only
        self._grad_handles: list[RemovableHandle] = []  # until the next step starts
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
        self._remove_grad_hooks()
        self._remove_opt_hooks()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._closed = True
        self._flush()

    def _remove_grad_hooks(self) -> None:
        for h in self._grad_handles:
            h.remove()
        self._grad_handles.clear()

    def _remove_step_hooks(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()

    def _remove_opt_hooks(self) -> None:
        for h in self._opt_handles:
            h.remove()
        self._opt_handles.clear()
        self._snapshot = None

    def _flush(self) -> None:
        self._store.flush(self._updates.init_sq if self._updates is not None else {})

    # ----------------------------------------------------------------------- hooks

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        if self._step_handles:
            self._remove_step_hooks()  # (a recorded forward that failed)
        if self._paused or not (module.training and torch.is_grad_enabled()):
            return
        self._remove_grad_hooks()  # (the last recorded step's backward is over)
        self._step += 1
        if self._step % self.every:
            return
        if self._store.pending > MAX_PENDING:
            self._flush()
        self._steps.append(self._step)
        self._hist_now = self.hist_every > 0 and self._n_records % self.hist_every == 0
        self._n_records += 1
        self._calls = {}
        hooks = self._step_handles
        if self._rec_act or self._rec_grad:
            hooks += [m.register_forward_hook(h) for m, h in self._leaf_hooks]
        if self._rec_act:
            hooks += [m.register_forward_pre_hook(h) for m, h in self._norm_hooks]
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
        if self._rec_grad:
            self._grad_handles += [
                get_gradient_edge(p).node.register_prehook(
                    partial(self._on_param_grad, layer, i, self._step)
                )
                for i, (layer, p) in enumerate(self._flat_params)
                if p.requires_grad
            ]

    def _key(self, name: str, calls: int) -> str:
        key = name if calls == 1 else f"{name}#{calls}"
        if key not in self._seen:
            self._seen.add(key)
            self._order.append(key)
            if key not in self._info:
                base = self._info[name]
                self._info[key] = LayerInfo(key, base.kind, base.depth, base.activation, base.norm)
        return key

    def _on_leaf(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point() or out.numel() == 0:
            return
        calls = self._calls[name] = self._calls.get(name, 0) + 1
        key = self._key(name, calls)
        if self._rec_act:
            x = out.detach()
            self._store.add("act", key, self._step, *output_stats(x, self._info[name]))
            if self._hist_now:  # a systematic sample of ≤ 2048 values (a copy); binned when read
                flat = (x if x.dtype in (torch.float32, torch.float64) else x.float()).reshape(-1)
                sample = torch.nan_to_num(flat[:: max(1, flat.numel() // _HIST_SAMPLE)])
                kept = self._samples.setdefault(key, [])
                kept[1:] = []  # keep the first and the latest only
                kept.append((self._step, sample))
        if self._rec_grad and out.requires_grad:
            out.register_hook(partial(self._on_out_grad, key, self._step))

    def _on_norm(self, name: str, module: nn.Module, args: Any) -> None:
        x = first_tensor(args)
        if x is None or not x.is_floating_point() or x.numel() == 0:
            return
        key = self._key(name, self._calls.get(name, 0) + 1)  # (the call about to run)
        meta, vals = norm_stats(module, x.detach())
        if meta[1]:  # (a batch norm's batch statistics)
            self._bn_counts[key] = x.numel() // x.shape[1]
            self._bn_warmup[key] = warmup(module)
        self._store.add("norm", key, self._step, meta, vals)

    def _on_out_grad(self, key: str, step: int, grad: Tensor) -> None:
        self._store.add("grad_out", key, step, None, [tensor_norm(grad)])

    def _on_param_grad(
        self, layer: str, index: int, step: int, grads: tuple[Tensor | None, ...]
    ) -> None:
        if grads[0] is not None:
            self._store.add("grad", layer, step, index, [tensor_norm(grads[0])])

    def _on_opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._snapshot is not None or self._updates is None:
            return
        snap = self._updates.before({id(p) for g in opt.param_groups for p in g["params"]})
        if snap is not None:  # (else another model's optimizer)
            self._last_opt = weakref.ref(opt)
            self._snapshot = (opt, self._steps[-1], snap)

    def _on_opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._snapshot is None or self._snapshot[0] is not opt or self._updates is None:
            return
        _, step, snap = self._snapshot
        self._store.add("update", "", step, snap.layers, self._updates.after(snap))
        self._remove_opt_hooks()

    # ----------------------------------------------------------------------- reading

    def recording(self) -> Recording:
        """The recorded run as a :class:`~normkit.diagnostics.Recording` (what verdicts and
        reports read)."""
        self._flush()
        size = len(self._store) + len(self._curvature) + len(self._noise) + len(self._steps)
        if self._cache is None or self._cache[0] != size:
            values = self._store.values()
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
    the start; it keeps a copy of the parameters as they were when ``watch`` started and, from
    the first optimizer step, a buffer of twice their size for the step's snapshot, on their
    device: leave ``"updates"`` out where that memory matters). :meth:`Recorder.curvature` and
    :meth:`Recorder.gradient_noise` measure the loss's sharpness and the gradient noise on
    demand.

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
