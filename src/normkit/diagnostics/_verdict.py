"""``Recorder.verdict()``: read vanishing/exploding gradients, dead and saturated units and
activation-scale drift off the recorded statistics."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from normkit.diagnostics._findings import Finding, Severity, sort_findings

if TYPE_CHECKING:
    from normkit.diagnostics._recorder import Recorder

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
    needed before vanishing/exploding is judged at all.
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


def _first_nonfinite(rec: Recorder, metrics: Sequence[str]) -> tuple[int, list[str]] | None:
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


def _nonfinite(rec: Recorder, t: Thresholds) -> list[Finding]:
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


def _gradient_flow(rec: Recorder, t: Thresholds) -> list[Finding]:
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


def _units(rec: Recorder, t: Thresholds) -> list[Finding]:
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


def _drift(rec: Recorder, t: Thresholds) -> list[Finding]:
    out = []
    stds = rec.series("act_std", rec.depth_layers)
    order = rec.layers
    # A layer feeding a norm may change scale freely (BN/LN make the next layer scale-invariant;
    # without weight decay such weights grow during healthy training): not drift.
    feeds_norm = {n for n, nxt in itertools.pairwise(order) if "norm" in rec.info(nxt).kind.lower()}
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
    names = [n for n in rec.depth_layers if n in stds]
    if len(names) >= t.min_depth_layers:
        for i in reversed(range(len(rec.steps))):
            col = [stds[n][i] for n in names]
            if all(math.isfinite(v) and v > 0 for v in col):
                ratio = col[-1] / col[0]
                if ratio >= t.drift_depth or ratio <= 1 / t.drift_depth:
                    grows = "grows" if ratio > 1 else "shrinks"
                    out.append(
                        Finding(
                            "activation-scale",
                            "warning",
                            f"activation std {grows} with depth: ×{ratio:.2g} from {names[0]!r} "
                            f"({col[0]:.2e}) to {names[-1]!r} ({col[-1]:.2e}) at step "
                            f"{rec.steps[i]}",
                            "use a variance-preserving init (kaiming for ReLU, xavier for tanh) "
                            "or normalization layers between the blocks",
                            layer=names[-1],
                            step=rec.steps[i],
                            value=ratio,
                        )
                    )
                break
    return out


def diagnose(rec: Recorder, **thresholds: float) -> list[Finding]:
    """Findings about a :class:`~normkit.diagnostics.Recorder`'s run, most severe first.

    - ``vanishing-gradients`` / ``exploding-gradients``: the median (over recorded steps)
      parameter-gradient norm of the depth layers (conv/linear, input side first) changes
      geometrically with depth — the first/last ratio ``r`` is below ``vanishing_warning``
      (1e-2; error below 1e-4) or above ``exploding_warning`` (1e2; error above 1e4) and the
      rank correlation of depth with log-norm confirms the trend. Backprop multiplies the
      Jacobians of the layers above, so ``r`` ≈ (per-layer gain)^(depth − 1) (Bengio et al.
      1994; Glorot & Bengio 2010). NaN/Inf gradients (with the first layer, in backward
      order, where they appear) and a total norm growing ×1e3 over the run are exploding too.
    - ``nonfinite-activations``: the first layer (forward order) and step producing NaN/Inf.
    - ``dead-relu`` / ``saturated-units``: fraction of dead ReLU units / saturated sigmoid-tanh
      outputs ≥ 0.5 (error ≥ 0.9).
    - ``activation-drift`` / ``activation-scale``: the output std of a depth layer that does
      not feed a norm moved ×10 over the run, or the std changes ×100 from the first to the
      last depth layer.

    Keyword overrides: any field of :class:`Thresholds`.

    >>> diagnose(rec, vanishing_warning=1e-3)
    """
    names = {f.name for f in fields(Thresholds)}
    unknown = set(thresholds) - names
    if unknown:
        raise TypeError(f"unknown threshold(s) {sorted(unknown)}; expected some of {sorted(names)}")
    t = Thresholds(**thresholds)  # type: ignore[arg-type]
    findings = [*_nonfinite(rec, t), *_gradient_flow(rec, t), *_units(rec, t), *_drift(rec, t)]
    return sort_findings(findings)
