"""``Recorder.verdict()``: read vanishing/exploding gradients, dead and saturated units,
activation-scale drift, lagging batch-norm statistics, a learning rate above the curvature bound
and a batch too small for the gradient noise off a :class:`~normkit.diagnostics.Recording`."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields

from normkit.diagnostics._data import HasRecording, Recording, as_recording
from normkit.diagnostics._findings import Finding, Severity, sort_findings

__all__ = ["Thresholds", "diagnose"]


@dataclass(frozen=True)
class Thresholds:
    """When :func:`diagnose` reports something (override any of them as keywords).

    ``vanishing_*``: first/last depth-layer gradient-norm ratio below which vanishing gradients
    are a warning / an error; ``exploding_*``: the ratio above which exploding gradients are;
    ``trend``: the minimum rank correlation between depth and log gradient norm for a ratio to
    count as geometric (guards against one odd layer); ``growth_over_steps``: growth of the
    total gradient norm from the first to the last recorded step; ``dead_*``/``saturated_*``:
    fraction of dead ReLU units / saturated sigmoid-tanh outputs (mean of the last 5 records);
    ``drift_steps``: change of a depth layer's activation std over the run; ``drift_depth``:
    ratio of the last to the first depth layer's activation std; ``min_depth_layers``: layers
    needed before vanishing/exploding is judged at all; ``lag_*``: a batch norm's running-statistics
    lag (``bn_stat_lag``, mean of the last 5 records) from which it is a warning / an error (and at
    least 3× the lag that batch noise alone gives); ``lr_bound_*``: lr / (2(1 + β)/λ) from which
    the learning rate is a warning / an error; ``snr_*``: the batch gradient's signal-to-noise
    ratio below which the batch is a warning / an error.
    """

    vanishing_warning: float = 1e-2
    vanishing_error: float = 1e-4
    exploding_warning: float = 1e2
    exploding_error: float = 1e4
    trend: float = 0.5
    growth_over_steps: float = 1e3
    dead_warning: float = 0.5
    dead_error: float = 0.9
    saturated_warning: float = 0.5
    saturated_error: float = 0.9
    drift_steps: float = 10.0
    drift_depth: float = 100.0
    min_depth_layers: int = 3
    lag_warning: float = 0.3
    lag_error: float = 1.0
    lr_bound_warning: float = 1.0
    lr_bound_error: float = 2.0
    snr_warning: float = 0.1
    snr_error: float = 0.01


def _finite(xs: Sequence[float]) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(ys: Sequence[float]) -> float:
    """Rank correlation of ``ys`` with their index (1: strictly increasing, −1: decreasing)."""
    n = len(ys)
    if n < 2:
        return 0.0
    rx, ry = list(range(n)), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0


def _grade(value: float, warning: float, error: float, *, above: bool) -> Severity | None:
    if above:
        return "error" if value >= error else "warning" if value >= warning else None
    return "error" if value <= error else "warning" if value <= warning else None


def _first_nonfinite(rec: Recording, metrics: Sequence[str]) -> tuple[int, list[str]] | None:
    """The first recorded step where some layer has a non-finite value of ``metrics``, and those
    layers in execution order."""
    layers = rec.layers
    recorded = {m: {n: rec.recorded(m, n) for n in layers} for m in metrics}
    for step in rec.steps:
        bad = [
            n
            for n in layers
            if any(
                (v := recorded[m][n].get(step)) is not None and not math.isfinite(v)
                for m in metrics
            )
        ]
        if bad:
            return step, bad
    return None


def _nonfinite(rec: Recording, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    hit = _first_nonfinite(rec, ("act_mean", "act_min", "act_max"))
    if hit is not None:
        step, bad = hit
        first = bad[0]
        out.append(
            Finding(
                "nonfinite-activations",
                "error",
                f"NaN/Inf activations from step {step} on; the first layer producing them is "
                f"{first!r} ({rec.info(first).kind})",
                "check that layer's inputs and weights at that step; lower the learning rate, "
                "add normalization before it, clip gradients (torch.nn.utils.clip_grad_norm_) "
                "or use a smaller init",
                layer=first,
                step=step,
                value=math.nan,
            )
        )
    hit = _first_nonfinite(rec, ("grad_out_norm", "grad_norm"))
    if hit is not None:
        step, bad = hit
        first = bad[-1]  # closest to the output: where the backward pass first produced it
        out.append(
            Finding(
                "exploding-gradients",
                "error",
                f"NaN/Inf gradients from step {step} on; they first appear (in backward order) "
                f"at {first!r} ({rec.info(first).kind})",
                "clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, use "
                "a smaller init or add normalization; check the loss for log(0) or 0-division",
                layer=first,
                step=step,
                value=math.inf,
            )
        )
    return out


def _typical(series: dict[str, list[float]], names: Sequence[str]) -> dict[str, float]:
    return {n: statistics.median(f) for n in names if n in series and (f := _finite(series[n]))}


def _gradient_flow(rec: Recording, t: Thresholds) -> list[Finding]:
    # The backpropagated signal: the gradient w.r.t. each depth layer's output. (Parameter
    # gradients δ_l·x_{l−1}ᵀ can hide it: in a homogeneous net a growing δ meets a shrinking x.)
    depth = rec.depth_layers
    signal = _typical(rec.series("grad_out_norm", depth), depth)
    params = _typical(rec.series("grad_norm", depth), depth)
    names = [n for n in depth if n in signal]
    if len(names) < t.min_depth_layers:
        return []
    g = [signal[n] for n in names]
    first, last = names[0], names[-1]
    if g[-1] <= 0:
        return []
    ratio = g[0] / g[-1]
    rho = _spearman([math.log(max(x, 1e-300)) for x in g])
    rate = ratio ** (1 / (len(g) - 1)) if ratio > 0 else 0.0
    where = (
        f"first/last depth-layer ratio of the gradient norm w.r.t. the layer outputs = "
        f"{ratio:.1e} ({first!r} {g[0]:.2e} vs {last!r} {g[-1]:.2e}, median over the recorded "
        f"steps; ×{rate:.3g} per layer over {len(g)} layers, rank correlation depth↔log-norm "
        f"{rho:+.2f})"
    )
    if first in params and params.get(last, 0) > 0:
        where += f"; parameter-gradient ratio {params[first] / params[last]:.1e}"
    out = []
    sev = _grade(ratio, t.vanishing_warning, t.vanishing_error, above=False)
    if sev and rho >= t.trend:
        out.append(
            Finding(
                "vanishing-gradients",
                sev,
                "gradient norm shrinks geometrically toward the input: " + where,
                "add normalization between layers (BatchNorm/LayerNorm), use ReLU-family "
                "activations with He init (torch.nn.init.kaiming_normal_), or residual "
                "connections; the early layers barely learn otherwise",
                layer=first,
                value=ratio,
            )
        )
    sev = _grade(ratio, t.exploding_warning, t.exploding_error, above=True)
    if sev and rho <= -t.trend:
        out.append(
            Finding(
                "exploding-gradients",
                sev,
                "gradient norm grows geometrically toward the input: " + where,
                "use a variance-preserving init (kaiming/xavier), add normalization between "
                "layers, clip gradients (torch.nn.utils.clip_grad_norm_) or lower the lr",
                layer=first,
                value=ratio,
            )
        )
    gn = rec.series("grad_norm", names)
    # growth over the run: total gradient norm of the first vs the last recorded step
    totals = []
    for i in range(len(rec.steps)):
        vals = [gn[n][i] for n in names]
        if all(math.isfinite(v) for v in vals):
            totals.append((rec.steps[i], math.sqrt(sum(v * v for v in vals))))
    if len(totals) >= 3 and totals[0][1] > 0:
        growth = totals[-1][1] / totals[0][1]
        if growth >= t.growth_over_steps:
            out.append(
                Finding(
                    "exploding-gradients",
                    "warning",
                    f"total gradient norm grew ×{growth:.1e} from step {totals[0][0]} to step "
                    f"{totals[-1][0]} ({totals[0][1]:.2e} → {totals[-1][1]:.2e})",
                    "lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                    "add normalization or weight decay",
                    step=totals[-1][0],
                    value=growth,
                )
            )
    return out


def _worst(
    hits: list[tuple[str, float, Severity]], *, key_high: bool = True
) -> tuple[str, float, Severity, str]:
    """The worst hit, the overall severity and a short list of the affected layers."""
    worst = max(hits, key=lambda h: h[1] if key_high else abs(math.log(h[1])))
    sev: Severity = "error" if any(h[2] == "error" for h in hits) else "warning"
    names = ", ".join(repr(h[0]) for h in hits[:5]) + (" …" if len(hits) > 5 else "")
    return worst[0], worst[1], sev, names


def _units(rec: Recording, t: Thresholds) -> list[Finding]:
    out = []
    dead: list[tuple[str, float, Severity]] = []
    for n, vals in rec.series("dead_frac").items():
        if f := _finite(vals)[-5:]:
            frac = statistics.fmean(f)
            if sev := _grade(frac, t.dead_warning, t.dead_error, above=True):
                dead.append((n, frac, sev))
    if dead:
        layer, frac, sev, names = _worst(dead)
        out.append(
            Finding(
                "dead-relu",
                sev,
                f"{len(dead)} ReLU layer(s) have ≥{t.dead_warning:.0%} dead units (channels "
                f"that output 0 for the whole batch; mean of the last 5 records): {names}; worst "
                f"{layer!r} with {frac:.0%}. Dead units get no gradient and never recover",
                "lower the learning rate, put BatchNorm before the ReLU, use LeakyReLU/GELU, or "
                "check the init (bias too negative, weights too large)",
                layer=layer,
                value=frac,
            )
        )
    sat: list[tuple[str, float, Severity]] = []
    for n, vals in rec.series("saturated_frac").items():
        if f := _finite(vals)[-5:]:
            frac = statistics.fmean(f)
            if sev := _grade(frac, t.saturated_warning, t.saturated_error, above=True):
                sat.append((n, frac, sev))
    if sat:
        layer, frac, sev, names = _worst(sat)
        out.append(
            Finding(
                "saturated-units",
                sev,
                f"{len(sat)} sigmoid/tanh layer(s) have ≥{t.saturated_warning:.0%} saturated "
                f"outputs (derivative < 0.02): {names}; worst {layer!r} ({rec.info(layer).kind}) "
                f"with {frac:.0%}. Almost no gradient passes through them",
                "normalize the pre-activations (BatchNorm/LayerNorm before the activation), use "
                "a smaller init (xavier for sigmoid/tanh) or a ReLU-family activation",
                layer=layer,
                value=frac,
            )
        )
    return out


def _drift(rec: Recording, t: Thresholds) -> list[Finding]:
    out = []
    stds = rec.series("act_std", rec.depth_layers)
    order = rec.layers
    # A layer feeding a norm may change scale freely (BN/LN make the next layer scale-invariant;
    # without weight decay such weights grow during healthy training): not drift.
    feeds_norm = {n for n, nxt in itertools.pairwise(order) if rec.info(nxt).norm is not None}
    moved: list[tuple[str, float, Severity]] = []
    for n, vals in stds.items():
        if n in feeds_norm:
            continue
        f = [v for v in vals if math.isfinite(v) and v > 0]
        if len(f) >= 2:
            change = f[-1] / f[0]
            if change >= t.drift_steps or change <= 1 / t.drift_steps:
                moved.append((n, change, "warning"))
    if moved:
        layer, change, sev, names = _worst(moved, key_high=False)
        out.append(
            Finding(
                "activation-drift",
                sev,
                f"the output std of {len(moved)} depth layer(s) changed more than "
                f"×{t.drift_steps:g} over the run: {names}; worst {layer!r} ×{change:.2g}. "
                "Later layers see a moving input scale",
                "add normalization after these layers, lower the learning rate or add weight decay",
                layer=layer,
                value=change,
            )
        )
    depth = [n for n in rec.depth_layers if n in stds]
    if len(depth) >= t.min_depth_layers:
        for i in reversed(range(len(rec.steps))):
            col = [stds[n][i] for n in depth]
            if all(math.isfinite(v) and v > 0 for v in col):
                ratio = col[-1] / col[0]
                if ratio >= t.drift_depth or ratio <= 1 / t.drift_depth:
                    grows = "grows" if ratio > 1 else "shrinks"
                    out.append(
                        Finding(
                            "activation-scale",
                            "warning",
                            f"activation std {grows} with depth: ×{ratio:.2g} from {depth[0]!r} "
                            f"({col[0]:.2e}) to {depth[-1]!r} ({col[-1]:.2e}) at step "
                            f"{rec.steps[i]}",
                            "use a variance-preserving init (kaiming for ReLU, xavier for tanh) "
                            "or normalization layers between the blocks",
                            layer=depth[-1],
                            step=rec.steps[i],
                            value=ratio,
                        )
                    )
                break
    return out


def _bn_lag(rec: Recording, t: Thresholds) -> list[Finding]:
    hits: list[tuple[str, float, Severity]] = []
    for n, vals in rec.series("bn_stat_lag").items():
        warm = rec.bn_warmup.get(n, 0)  # (before: the start-up bias of the average, not lag)
        if not (f := _finite([v for s, v in zip(rec.steps, vals, strict=True) if s >= warm])[-5:]):
            continue
        lag = statistics.fmean(f)
        # batch noise alone: E[(μ_B − μ)²/σ²] = 1/m and E[(σ_B/σ − 1)²] ≈ 1/(2m), m values/channel
        floor = 3 * math.sqrt(1.5 / rec.bn_counts.get(n, 1))
        if sev := _grade(lag, max(t.lag_warning, floor), max(t.lag_error, floor), above=True):
            hits.append((n, lag, sev))
    if not hits:
        return []
    layer, lag, sev, names = _worst(hits)
    return [
        Finding(
            "bn-running-stats-lag",
            sev,
            f"the running statistics of {len(hits)} batch norm(s) lag the batch statistics: "
            f"{names}; worst {layer!r}, where eval-mode outputs differ from train-mode ones by "
            f"{lag:.2f} standard deviations (bn_stat_lag, mean of the last 5 records). Eval "
            "accuracy will be off until they catch up",
            "recalibrate the running statistics before evaluating: "
            "normkit.nn.recalibrate_batchnorm(model, train_loader) (exact population "
            "statistics in one pass; torch.optim.swa_utils.update_bn is torch's cumulative "
            "average), or raise the BN momentum",
            layer=layer,
            value=lag,
        )
    ]


def _curvature(rec: Recording, t: Thresholds) -> list[Finding]:
    if not rec.curvature or rec.curvature[-1].lr is None:
        return []
    c = rec.curvature[-1]
    assert c.lr is not None
    ratio = c.lr / c.bound
    sev = _grade(ratio, t.lr_bound_warning, t.lr_bound_error, above=True)
    if sev is None:
        return []
    beta = f"(1 + {c.momentum:g})" if c.momentum else ""
    return [
        Finding(
            "lr-above-curvature-bound",
            sev,
            f"learning rate {c.lr:g} is {ratio:.2g}× the stability bound 2{beta}/λ = "
            f"{c.bound:.3g} of the loss's top Hessian eigenvalue λ = {c.eigenvalue:.4g} "
            f"(power iteration, {c.iterations} Hessian-vector products, step {c.step}); "
            "gradient descent diverges along that direction on the local quadratic model",
            f"lower the learning rate below {c.bound:.3g} (or warm it up), add normalization, "
            "or clip gradients (torch.nn.utils.clip_grad_norm_)",
            step=c.step,
            value=ratio,
        )
    ]


def _noise(rec: Recording, t: Thresholds) -> list[Finding]:
    if not rec.noise:
        return []
    g = rec.noise[-1]
    sev = _grade(g.total_snr, t.snr_warning, t.snr_error, above=False)
    if sev is None:
        return []
    worst = min(g.layers, key=lambda n: g.layers[n]) if g.layers else None
    scale = "unbounded" if math.isinf(g.noise_scale) else f"≈ {g.noise_scale:.0f}"
    steps = f"about 1 + 1/SNR = {1 + 1 / g.total_snr:.3g}×" if g.total_snr > 0 else "unboundedly"
    return [
        Finding(
            "batch-too-small",
            sev,
            f"the gradient of a batch of {g.batch} is mostly noise: signal-to-noise "
            f"‖G‖²/(tr Σ/B) = {g.total_snr:.2g} from {g.groups} micro-batch gradients at step "
            f"{g.step}; the noise scale (the batch where signal = noise) is {scale}, so "
            f"training takes {steps} the fewest steps possible"
            + (f"; lowest layer {worst!r} with {g.layers[worst]:.2g}" if worst else ""),
            "use a larger batch (or accumulate gradients) up to the noise scale, or lower the "
            "learning rate in proportion (McCandlish et al. 2018)",
            layer=worst,
            step=g.step,
            value=g.total_snr,
        )
    ]


def diagnose(run: Recording | HasRecording, **thresholds: float) -> list[Finding]:
    """Findings about a recorded run (a :class:`~normkit.diagnostics.Recorder` or its
    :class:`~normkit.diagnostics.Recording`), most severe first.

    - ``vanishing-gradients`` / ``exploding-gradients``: the median (over recorded steps)
      gradient norm w.r.t. the outputs of the depth layers (conv/linear, input side first)
      changes geometrically with depth — the first/last ratio ``r`` is below
      ``vanishing_warning`` (1e-2; error below 1e-4) or above ``exploding_warning`` (1e2; error
      above 1e4) and the rank correlation of depth with log-norm confirms the trend. Backprop
      multiplies the Jacobians of the layers above, so ``r`` ≈ (per-layer gain)^(depth − 1)
      (Bengio et al. 1994; Glorot & Bengio 2010). NaN/Inf gradients (with the first layer, in
      backward order, where they appear) and a total norm growing ×1e3 over the run are
      exploding too.
    - ``nonfinite-activations``: the first layer (forward order) and step producing NaN/Inf.
    - ``dead-relu`` / ``saturated-units``: fraction of dead ReLU units / saturated sigmoid-tanh
      outputs ≥ 0.5 (error ≥ 0.9).
    - ``activation-drift`` / ``activation-scale``: the output std of a depth layer that does
      not feed a norm moved ×10 over the run, or the std changes ×100 from the first to the
      last depth layer.
    - ``bn-running-stats-lag``: a batch norm's ``bn_stat_lag`` ≥ 0.3 (error ≥ 1) and ≥ 3× its
      batch-noise floor √(1.5/m), judged on steps after its running average warmed up
      (3/momentum updates): recalibrate with :func:`normkit.nn.recalibrate_batchnorm` (or
      ``torch.optim.swa_utils.update_bn``).
    - ``lr-above-curvature-bound`` (after :meth:`Recorder.curvature`): lr > 2(1 + β)/λ
      (error > 2×).
    - ``batch-too-small`` (after :meth:`Recorder.gradient_noise`): the batch gradient's
      signal-to-noise ratio < 0.1 (error < 0.01), i.e. the batch is below a tenth of the noise
      scale B, where training needs about 1 + B/batch times the fewest steps possible
      (McCandlish et al. 2018).

    Keyword overrides: any field of :class:`Thresholds`.

    >>> from normkit.diagnostics import watch
    >>> from normkit.examples.models import deep_mlp
    >>> model = deep_mlp(30)
    >>> with watch(model) as rec:
    ...     model(torch.randn(32, 64)).square().mean().backward()
    >>> findings = diagnose(rec, vanishing_warning=1e-3)
    >>> "vanishing-gradients" in {f.code for f in findings}
    True
    """
    names = {f.name for f in fields(Thresholds)}
    unknown = set(thresholds) - names
    if unknown:
        raise TypeError(f"unknown threshold(s) {sorted(unknown)}; expected some of {sorted(names)}")
    t = Thresholds(**thresholds)  # type: ignore[arg-type]
    rec = as_recording(run)
    checks = (_nonfinite, _gradient_flow, _units, _drift, _bn_lag, _curvature, _noise)
    return sort_findings([f for check in checks for f in check(rec, t)])
