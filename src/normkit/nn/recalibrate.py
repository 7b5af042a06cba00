"""Exact batch-norm recalibration: recompute every running statistic as a population statistic.

Batch norm's running averages trail the weights (the ``momentum`` average mixes statistics of
old weights in), and after weight averaging (SWA/EMA), a learning-rate change or fine-tuning
they no longer describe the model at all: eval accuracy drops. torch's
``swa_utils.update_bn`` re-estimates them with a cumulative average of per-batch means and
*per-batch* unbiased variances, which is not the population variance (it misses the spread of
the batch means). :func:`recalibrate_batchnorm` computes the exact one: per layer, the
per-batch moments (count, mean, M2) are Chan-merged (:func:`normkit._stats.merge_stacked`) in
float64 over all batches and, with ``torch.distributed``, over all processes, so the result
equals the statistics of the concatenated data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from normkit import backends
from normkit._stats import Moments, merge_stacked
from normkit.nn import _catalog as catalog
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.keras import BatchNormalization

__all__ = ["LayerRecalibration", "RecalibrationReport", "recalibrate_batchnorm"]

Kind = Literal["batch", "instance"]


@dataclass(frozen=True)
class LayerRecalibration:
    """How one layer's running statistics moved.

    ``max_mean_shift``: the largest ``|new_mean − old_mean| / sqrt(new_var + eps)`` over the
    features (a shift in units of the new standard deviation); ``max_var_ratio``: the largest
    ``max(new_var / old_var, old_var / new_var)``; ``count``: values per feature that entered
    the statistics; ``skipped_batches``: batches left out because their statistics were not
    finite (a NaN/Inf batch never reaches the running statistics).
    """

    name: str
    kind: str
    count: int
    max_mean_shift: float
    max_var_ratio: float
    skipped_batches: int = 0


@dataclass(frozen=True)
class RecalibrationReport:
    """What :func:`recalibrate_batchnorm` did: one row per layer, the metric before and after."""

    layers: tuple[LayerRecalibration, ...]
    num_batches: int
    metric_before: float | None = None
    metric_after: float | None = None
    unreached: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [
            f"recalibrated {len(self.layers)} layer(s) over {self.num_batches} batch(es)",
        ]
        if self.metric_before is not None and self.metric_after is not None:
            lines.append(f"metric: {self.metric_before:.6g} -> {self.metric_after:.6g}")
        w = max([len(r.name) for r in self.layers] + [5])
        lines.append(
            f"{'layer':<{w}}  {'values':>10}  {'max mean shift':>14}  {'max var ratio':>13}"
        )
        for r in self.layers:
            skipped = (
                f"  ({r.skipped_batches} non-finite batch(es) skipped)" if r.skipped_batches else ""
            )
            lines.append(
                f"{r.name:<{w}}  {r.count:>10}  {r.max_mean_shift:>14.4g}  {r.max_var_ratio:>13.4g}"
                + skipped
            )
        if self.unreached:
            lines.append("not reached by any batch (left unchanged): " + ", ".join(self.unreached))
        return "\n".join(lines)


@dataclass
class _Target:
    """One layer to recalibrate and what its hook has gathered so far."""

    name: str
    module: nn.Module
    kind: Kind
    axis: int
    unbiased: bool  # torch stores the unbiased variance; Keras the biased one
    # batch kind: per batch (count, mean, biased variance) per feature, as computed (merged once,
    # in float64, by _finish: no per-batch host sync or merge on the hot path)
    parts: list[tuple[Tensor | int, Tensor, Tensor]] = field(default_factory=list)
    moments: Moments | None = None  # batch kind: the merged per-feature moments, float64
    sums: Tensor | None = None  # instance kind: (Σ mean_i, Σ var_i, samples) per feature
    skipped: int = 0

    @property
    def running_mean(self) -> Tensor:
        """The layer's ``running_mean`` buffer (every target has one)."""
        return cast(Tensor, self.module.running_mean)

    @property
    def running_var(self) -> Tensor:
        """The layer's ``running_var`` buffer (every target has one)."""
        return cast(Tensor, self.module.running_var)


def _kind(m: nn.Module) -> tuple[Kind, int, bool] | None:
    """(kind, feature axis, stores unbiased variance) for a layer with running statistics."""
    rm = getattr(m, "running_mean", None)
    if not isinstance(rm, Tensor) or is_lazy(rm):
        return None
    family = catalog.family(m)
    if family == "batch":
        return "batch", getattr(m, "axis", 1), not isinstance(m, BatchNormalization)
    if family == "instance":
        return "instance", 1, True
    return None


def _targets(model: nn.Module) -> list[_Target]:
    found = []
    for name, m in model.named_modules():
        k = _kind(m)
        if k is not None:
            found.append(_Target(name or type(m).__name__, m, *k))
    return found


def _gather(t: _Target, x: Tensor, mask: Tensor | None) -> None:
    """Add one batch's statistics of input ``x`` to ``t`` (float64, exact merge)."""
    if t.kind == "batch":
        ax = t.axis % x.ndim
        dims = [d for d in range(x.ndim) if d != ax]
        m = None
        if mask is not None:
            m = mask.to(device=x.device, dtype=torch.bool)
            if m.ndim == x.ndim - 1:
                m = m.unsqueeze(ax)
        part = Moments.of(x.detach(), dims, mask=m)
        t.parts.append((part.count.reshape(-1), part.mean.reshape(-1), part.var.reshape(-1)))
        return
    # instance norm: torch's running stats average the per-instance mean and unbiased variance
    xs = x.detach() if x.ndim > t.running_mean.ndim + 1 else x.detach().unsqueeze(0)
    if xs.ndim < 3 or xs.shape[0] == 0:
        return
    dims = list(range(2, xs.ndim))
    var, mean = torch.var_mean(xs.double(), dim=dims, correction=1 if t.unbiased else 0)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        t.skipped += 1
        return
    n = torch.full_like(mean[0], float(xs.shape[0]))
    new = torch.stack([mean.sum(0), var.sum(0), n])
    t.sums = new if t.sums is None else t.sums + new


def _finish(t: _Target) -> None:
    """Merge a batch-kind target's per-batch parts into ``t.moments`` (float64, exact); a batch
    whose statistics are not finite is counted in ``t.skipped`` and left out."""
    if t.kind != "batch" or not t.parts:
        return
    c = t.running_mean.numel()
    dev = t.parts[0][1].device
    count = torch.stack(
        [
            n.to(device=dev, dtype=torch.float64)
            if isinstance(n, Tensor)
            else torch.full((c,), float(n), dtype=torch.float64, device=dev)
            for n, _, _ in t.parts
        ]
    )
    mean = torch.stack([m.detach() for _, m, _ in t.parts]).double()
    var = torch.stack([v.detach() for _, _, v in t.parts]).double()
    t.parts = []
    finite = torch.isfinite(mean).all(1) & torch.isfinite(var).all(1)
    t.skipped += int((~finite).sum())
    if bool(finite.any()):
        t.moments = merge_stacked(Moments(count[finite], mean[finite], var[finite] * count[finite]))


# Batch norms whose training forward is plain batch normalization: during recalibration they
# run :func:`_normalizing_forward` (one statistics pass, shared by the recording and the output).
_PLAIN_BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
)


def _affine(layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """A batch norm's ``weight`` and ``bias`` (``None`` without affine)."""
    return cast(Tensor | None, layer.weight), cast(Tensor | None, layer.bias)


def _normalizing_forward(t: _Target) -> Callable[..., Tensor]:
    """A forward for a plain batch norm that computes the batch's moments once, records them
    and normalizes with them: the training-mode output, without the running-average update
    and without a second statistics pass in a hook."""
    layer = t.module
    original = type(layer).forward

    def forward(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        ax = t.axis % input.ndim if input.ndim else 0
        n = input.numel() // max(input.shape[ax], 1) if input.ndim > 1 else 0
        if args or kwargs or n < 2:  # a mask, an empty or a one-value batch: the layer's own way
            _gather(t, input, args[0] if args else kwargs.get("mask"))
            return original(layer, input, *args, **kwargs)
        # the registry's training batch norm (any axis, half inputs with float32 statistics; the
        # backend auto picks for this input) returning the output, batch mean and biased variance
        w, b = _affine(layer)
        eps = float(getattr(layer, "eps", 1e-5))
        y, mean, var = backends.dispatch("batch_norm_train", input, w, b, eps, ax)
        t.parts.append((n, mean, var))
        return y

    return forward


def _pack(targets: list[_Target]) -> Tensor:
    """Every layer's gathered values in one float64 vector (zeros where nothing was gathered)."""
    rows = []
    for t in targets:
        c = t.running_mean.numel()
        if t.kind == "batch":
            mo = t.moments
            z = torch.zeros(c, dtype=torch.float64)
            rows += [z, z, z] if mo is None else [mo.count.cpu(), mo.mean.cpu(), mo.m2.cpu()]
        else:
            rows.append(
                torch.zeros(3 * c, dtype=torch.float64)
                if t.sums is None
                else t.sums.cpu().reshape(-1)
            )
    return torch.cat([r.reshape(-1) for r in rows]) if rows else torch.zeros(0, dtype=torch.float64)


def _merge_across_processes(targets: list[_Target], group: Any) -> None:
    """Replace every layer's local values by the merge over all ranks (one all_gather)."""
    local = _pack(targets)
    backend = dist.get_backend(group)
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else local.device
    local = local.to(dev)
    rows = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, local, group=group)
    stacked = torch.stack(rows).cpu()
    off = 0
    for t in targets:
        c = t.running_mean.numel()
        block = stacked[:, off : off + 3 * c].reshape(-1, 3, c)
        off += 3 * c
        if t.kind == "batch":
            merged = merge_stacked(Moments(block[:, 0], block[:, 1], block[:, 2]))
            t.moments = merged if block[:, 0].sum() > 0 else None
        else:
            total = block.sum(0)
            t.sums = total if total[2].sum() > 0 else None


def _batch_input(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, list | tuple) and batch:
        return (batch[0],), {}
    raise TypeError(
        f"recalibrate_batchnorm: cannot feed a batch of type {type(batch).__name__} to the model; "
        "yield tensors, (input, target) tuples or keyword dicts, or pass forward=lambda model, "
        "batch: model(...)"
    )


def _to(obj: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def recalibrate_batchnorm(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_batches: int | None = None,
    process_group: Any = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    metric: Callable[[nn.Module], float] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> RecalibrationReport:
    """Recompute the running statistics of every batch norm in ``model`` exactly, in place.

    For each layer with running statistics — ``torch.nn.BatchNorm*``/``SyncBatchNorm``/lazy
    ones, every normkit batch norm (``BatchNorm*``, ``BatchRenorm*``, ``GhostBatchNorm*``,
    ``SyncBatchNorm``, ``BatchNormAct2d``, Keras-style ``BatchNormalization``) and instance
    norms with ``track_running_stats=True`` — the statistics of its input over all batches are
    computed in one pass and written into ``running_mean`` / ``running_var``:

    .. math:: \\mu = \\frac1n\\sum_i x_i, \\qquad
        \\sigma^2 = \\frac{1}{n-1}\\sum_i (x_i-\\mu)^2 \\;(\\text{Keras layers: } \\tfrac1n)

    with ``n`` every value of a feature in every batch (masked positions excluded when the layer
    is called with a mask), merged exactly over batches and processes (Chan et al. 1979) instead
    of the exponential average of training. Instance norms get the mean over all samples of the
    per-sample mean and unbiased variance (what their running average estimates). As in
    training, each batch norm normalizes the batch with the batch's own statistics during the
    pass; every other module runs in eval mode (dropout off); modes are restored afterwards.
    ``num_batches_tracked`` becomes the number of batches. Frozen batch norms are left alone
    (their statistics are fixed by design); a layer no batch reached keeps its statistics; a
    batch whose statistics are NaN/Inf is left out of that layer's statistics and counted.

    Args:
        model: the model, changed in place.
        loader: an iterable of batches: tensors, ``(input, target, ...)`` sequences (the first
            element is fed) or dicts of keyword arguments; see ``forward``.
        num_batches: use at most this many batches (default: all).
        process_group: with ``torch.distributed`` initialized, merge the statistics over the
            ranks of this group (default: the world when initialized; every rank must call). The
            result equals one process over the concatenated data.
        forward: ``forward(model, batch)`` runs the model on a batch when the default feeding
            does not fit.
        metric: ``metric(model) -> float`` evaluated in eval mode before and after, reported.
        device: move tensor batches to this device first.
        progress: show a progress bar (rich).

    Returns:
        A :class:`RecalibrationReport` (printable) of how far each layer's statistics moved.

    Reference: Ioffe & Szegedy 2015 (arXiv:1502.03167) §3.1, population statistics for
    inference; Izmailov et al. 2018 (SWA, arXiv:1803.05407) recompute them after averaging.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    >>> data = [torch.randn(16, 4) for _ in range(5)]
    >>> report = recalibrate_batchnorm(model, data, progress=False)
    >>> x = torch.cat(data)
    >>> h = model[0](x)
    >>> bool(torch.allclose(model[1].running_var, h.var(0), atol=1e-5))
    True
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be a positive int or None (got {num_batches})")
    targets = _targets(model)
    if not targets:
        warnings.warn(
            "recalibrate_batchnorm: the model has no batch norm with running statistics; nothing "
            "to do (frozen batch norms and track_running_stats=False layers are skipped)",
            stacklevel=2,
        )
    group = process_group
    use_dist = dist.is_available() and dist.is_initialized()
    modes = {m: m.training for m in model.modules()}
    before = _metric(model, metric)
    saved = {t.name: (t.running_mean.clone(), t.running_var.clone()) for t in targets}
    handles = []
    patched = []
    for t in targets:
        if type(t.module) in _PLAIN_BATCH_NORMS:
            t.module.forward = _normalizing_forward(t)  # instance attribute; deleted below
            patched.append(t.module)
            continue

        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], t: _Target = t
        ) -> None:
            x = args[0] if args else kwargs.get("input")
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            if isinstance(x, Tensor):
                _gather(t, x, mask if isinstance(mask, Tensor) else None)

        handles.append(t.module.register_forward_pre_hook(hook, with_kwargs=True))
    seen = 0
    try:
        model.eval()
        for t in targets:
            t.module.train()
        run = forward or _default_forward
        with torch.no_grad(), _progress(progress, num_batches) as advance:
            for batch in loader:
                if num_batches is not None and seen >= num_batches:
                    break
                run(model, _to(batch, device))
                seen += 1
                advance()
    finally:
        for h in handles:
            h.remove()
        for layer in patched:
            del layer.forward
        for m, mode in modes.items():
            m.train(mode)
    for t in targets:
        _finish(t)
    if use_dist:
        _merge_across_processes(targets, group)
    rows, unreached = [], []
    with torch.no_grad():
        for t in targets:
            row = _write(t, saved[t.name], seen)
            if row is None:
                unreached.append(t.name)
            else:
                rows.append(row)
    after = _metric(model, metric)
    return RecalibrationReport(tuple(rows), seen, before, after, tuple(unreached))


def _default_forward(model: nn.Module, batch: Any) -> Any:
    args, kwargs = _batch_input(batch)
    return model(*args, **kwargs)


def _metric(model: nn.Module, metric: Callable[[nn.Module], float] | None) -> float | None:
    if metric is None:
        return None
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return float(metric(model))
    finally:
        for m, mode in modes.items():
            m.train(mode)


def _write(t: _Target, old: tuple[Tensor, Tensor], num_batches: int) -> LayerRecalibration | None:
    """Write the gathered statistics into the layer; ``None`` if no value reached it."""
    rm, rv = t.running_mean, t.running_var
    if t.kind == "batch":
        mo = t.moments
        if mo is None or float(mo.count.min()) < 1:
            return None
        n = mo.count
        if t.unbiased and float(n.min()) < 2:
            warnings.warn(
                f"recalibrate_batchnorm: {t.name} saw a single value per feature; its unbiased "
                "variance is undefined, so its statistics are left unchanged (feed more data)",
                stacklevel=3,
            )
            return None
        mean, var = mo.mean, mo.m2 / (n - 1 if t.unbiased else n)
        count = int(n.min())
    else:
        if t.sums is None:
            return None
        samples = t.sums[2]
        mean, var = t.sums[0] / samples, t.sums[1] / samples
        count = int(samples.min())
    eps = float(getattr(t.module, "eps", 1e-5))
    old_mean, old_var = (o.double().reshape(-1).to(mean.device) for o in old)
    shift = ((mean - old_mean).abs() / (var + eps).sqrt()).max()
    ratio = torch.maximum(var / old_var, old_var / var).nan_to_num(math.inf).max()
    rm.copy_(mean.reshape(rm.shape).to(rm))
    rv.copy_(var.reshape(rv.shape).to(rv))
    nbt = getattr(t.module, "num_batches_tracked", None)
    if isinstance(nbt, Tensor):
        nbt.fill_(num_batches)
    return LayerRecalibration(
        t.name, type(t.module).__name__, count, float(shift), float(ratio), t.skipped
    )


class _progress:
    """A rich progress bar over the batches (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total = enabled, total
        self.bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("recalibrating batch norm", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
