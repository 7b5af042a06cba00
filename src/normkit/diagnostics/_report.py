"""Showing a recorded run: rich tables, the gradient-flow figure, one figure per instrument and a
self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normkit._optional import require
from normkit.diagnostics._data import Recording
from normkit.diagnostics._findings import Finding, render_findings, sort_findings

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

__all__ = ["figures", "html_report", "plot_recorder", "print_report", "summary_rows"]


def _median(xs: Sequence[float]) -> float:
    f = [x for x in xs if not math.isnan(x)]
    return statistics.median(f) if f else math.nan


def _last(xs: Sequence[float]) -> float:
    f = [x for x in xs if not math.isnan(x)]
    return f[-1] if f else math.nan


def summary_rows(rec: Recording) -> list[dict[str, Any]]:
    """One row per watched layer: last activation mean/std, last dead/saturated fraction and the
    medians over the recorded steps of the output-gradient norm, the parameter-gradient norm and
    the update ratio, and the last distance from initialization (``nan`` where not
    applicable)."""
    series = {
        m: rec.series(m)
        for m in (
            "act_mean",
            "act_std",
            "dead_frac",
            "saturated_frac",
            "grad_out_norm",
            "grad_norm",
            "update_ratio",
            "init_distance",
        )
    }
    rows = []
    for n in rec.layers:
        info = rec.info(n)

        def get(m: str, agg: Any, n: str = n) -> float:
            return agg(series[m][n]) if n in series[m] else math.nan

        rows.append(
            {
                "layer": n,
                "kind": info.kind,
                "act_mean": get("act_mean", _last),
                "act_std": get("act_std", _last),
                "dead_frac": get("dead_frac", _last),
                "saturated_frac": get("saturated_frac", _last),
                "grad_out_norm": get("grad_out_norm", _median),
                "grad_norm": get("grad_norm", _median),
                "update_ratio": get("update_ratio", _median),
                "init_distance": get("init_distance", _last),
            }
        )
    return rows


_COLUMNS = (
    ("layer", "layer"),
    ("kind", "kind"),
    ("act_mean", "act mean"),
    ("act_std", "act std"),
    ("dead_frac", "dead"),
    ("saturated_frac", "saturated"),
    ("grad_out_norm", "‖∂L/∂out‖"),
    ("grad_norm", "‖∂L/∂θ‖"),
    ("update_ratio", "‖Δθ‖/‖θ‖"),
    ("init_distance", "‖θ−θ₀‖/‖θ₀‖"),
)


_NORM_COLUMNS = (
    ("layer", "layer"),
    ("kind", "kind"),
    ("norm_in_rms", "input rms"),
    ("norm_out_rms", "output rms"),
    ("gamma_min", "γ min"),
    ("gamma_max", "γ max"),
    ("bn_stat_lag", "running-stats lag"),
    ("bn_dead_frac", "dead channels"),
)


def norm_rows(rec: Recording) -> list[dict[str, Any]]:
    """One row per normalization layer: the last recorded value of each of its health metrics
    (``nan`` where not applicable)."""
    rows = []
    for n in rec.norm_layers:
        row: dict[str, Any] = {"layer": n, "kind": rec.info(n).kind}
        for key, _ in _NORM_COLUMNS[2:]:
            vals = rec.recorded(key, n)
            row[key] = vals[max(vals)] if vals else math.nan
        rows.append(row)
    return rows


def instrument_lines(rec: Recording) -> list[str]:
    """One line per on-demand measurement (curvature, gradient noise), latest last."""
    lines = []
    for c in rec.curvature:
        lr = "no optimizer" if c.lr is None else f"lr {c.lr:g} = {c.lr / c.bound:.2g}× the bound"
        lines.append(
            f"curvature at step {c.step}: top Hessian eigenvalue λ = {c.eigenvalue:.4g} "
            f"({c.iterations} products), stability bound 2(1+β)/λ = {c.bound:.3g}; {lr}"
        )
    for g in rec.noise:
        lines.append(
            f"gradient noise at step {g.step}: batch {g.batch}, {g.groups} micro-batches, "
            f"signal-to-noise {g.total_snr:.3g}, noise scale {g.noise_scale:.3g}"
        )
    return lines


def _fmt(key: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "-"
    if key in ("dead_frac", "saturated_frac", "bn_dead_frac"):
        return f"{v:.0%}"
    return f"{v:.3g}"


def print_report(
    rec: Recording, findings: Sequence[Finding], *, console: Console | None = None
) -> None:
    """The per-layer summary table (last value / median over the recorded steps) and the
    findings, printed with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"per-layer statistics ({len(rec.steps)} recorded steps, every {rec.every})"
    )
    for key, label in _COLUMNS:
        table.add_column(label, justify="left" if key in ("layer", "kind") else "right")
    for row in summary_rows(rec):
        table.add_row(*(_fmt(k, row[k]) for k, _ in _COLUMNS))
    console.print(table)
    if rec.norm_layers:
        table = Table(title="normalization health (last recorded step)")
        for key, label in _NORM_COLUMNS:
            table.add_column(label, justify="left" if key in ("layer", "kind") else "right")
        for row in norm_rows(rec):
            table.add_row(*(_fmt(k, row[k]) for k, _ in _NORM_COLUMNS))
        console.print(table)
    for line in instrument_lines(rec):
        console.print(line)
    render_findings(findings, console=console)


def _require_matplotlib() -> None:
    require("matplotlib", extra="plot", feature="the diagnostics figures (Recorder.plot, to_html)")


def _figure(rec: Recording) -> Figure:
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    depth = rec.depth_layers
    cmap = colormaps["viridis"]
    steps = rec.steps

    def colour(i: int, n: int) -> Any:
        return cmap(i / max(n - 1, 1))

    def positive(vals: Sequence[float]) -> list[float]:
        return [v if v > 0 and math.isfinite(v) else math.nan for v in vals]

    # (a) per-layer parameter-gradient norm over the steps
    ax = axes[0, 0]
    gn = rec.series("grad_norm", depth)
    for i, n in enumerate(depth):
        ax.plot(steps, positive(gn[n]), color=colour(i, len(depth)), lw=1.2, label=n)
    ax.set(
        yscale="log",
        xlabel="step",
        ylabel="‖∂L/∂θ‖ (per layer)",
        title="gradient flow over steps (colour: input side → output side)",
    )
    if 0 < len(depth) <= 12:
        ax.legend(fontsize=7, ncol=2)

    # (b) the depth profile of the gradient w.r.t. layer outputs at a few steps
    ax = axes[0, 1]
    go = rec.series("grad_out_norm", depth)
    picks = sorted({0, len(steps) // 2, len(steps) - 1}) if steps else []
    for j, i in enumerate(picks):
        ax.plot(
            range(len(depth)),
            positive([go[n][i] for n in depth]),
            marker="o",
            ms=3,
            color=colour(j, len(picks)),
            label=f"step {steps[i]}",
        )
    ax.set(
        yscale="log",
        xlabel="depth layer (input → output)",
        ylabel="‖∂L/∂output‖",
        title="gradient norm by depth",
    )
    if len(depth) <= 16:
        ax.set_xticks(range(len(depth)), depth, rotation=60, fontsize=7, ha="right")
    if picks:
        ax.legend(fontsize=8)

    # (c) update-to-weight ratio
    ax = axes[1, 0]
    ur = rec.series("update_ratio", depth)
    for i, n in enumerate(depth):
        ax.plot(steps, positive(ur[n]), color=colour(i, len(depth)), lw=1.2)
    ax.axhline(1e-3, color="grey", ls="--", lw=0.8)
    ax.set(
        yscale="log",
        xlabel="step",
        ylabel="‖Δθ‖/‖θ‖",
        title="update-to-weight ratio (dashed: the usual ~1e-3)",
    )

    # (d) activation histograms (latest histogram step)
    ax = axes[1, 1]
    hists = rec.histograms()
    acts = [n for n in rec.layers if rec.info(n).activation and n in hists]
    shown = (acts or [n for n in depth if n in hists])[:6]
    for i, n in enumerate(shown):
        step, counts, lo, hi = hists[n][-1]
        total = sum(counts) or 1.0
        width = (hi - lo) / len(counts) if hi > lo else 1.0
        edges = [lo + k * width for k in range(len(counts) + 1)]
        dens = [c / total / width for c in counts]
        ax.stairs(dens, edges, color=colour(i, len(shown)), label=f"{n} (step {step})")
    ax.set(yscale="log", xlabel="activation", ylabel="density", title="activation histograms")
    if shown:
        ax.legend(fontsize=7)
    return fig


def _over_steps(
    ax: Any, rec: Recording, metric: str, layers: list[str], ylabel: str, title: str
) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    vals = rec.series(metric, layers)
    for i, n in enumerate(layers):
        ys = [v if math.isfinite(v) else math.nan for v in vals[n]]
        ax.plot(rec.steps, ys, color=cmap(i / max(len(layers) - 1, 1)), lw=1.2, label=n)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if 0 < len(layers) <= 12:
        ax.legend(fontsize=7, ncol=2)


def figures(rec: Recording) -> dict[str, Figure]:
    """``{title: figure}``: the gradient-flow figure, then one per instrument that has data
    (distance from initialization, normalization health, gradient noise, curvature)."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    out = {"Gradient flow": _figure(rec)}
    moved = [n for n in rec.layers if rec.recorded("init_distance", n)]
    if moved:
        fig = Figure(figsize=(13, 4.5), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        _over_steps(ax1, rec, "init_distance", moved, "‖w − w₀‖/‖w₀‖", "distance from init")
        _over_steps(ax2, rec, "update_ratio", moved, "‖Δw‖/‖w‖", "update-to-weight ratio")
        ax2.set_yscale("log")
        out["Distance from initialization"] = fig
    norms = rec.norm_layers
    if norms:
        bns = [n for n in norms if rec.recorded("bn_stat_lag", n)]
        fig = Figure(figsize=(13, 9), layout="constrained")
        axes = fig.subplots(2, 2)
        _over_steps(
            axes[0, 0],
            rec,
            "bn_stat_lag",
            bns,
            "eval − train output (σ)",
            "running-statistics lag (batch norms)",
        )
        _over_steps(axes[0, 1], rec, "bn_dead_frac", bns, "fraction", "dead channels")
        _over_steps(axes[1, 0], rec, "norm_in_rms", norms, "rms", "input scale (dashed: output)")
        out_rms = rec.series("norm_out_rms", norms)
        for n in norms:
            axes[1, 0].plot(rec.steps, out_rms[n], ls="--", lw=1.0, color="grey")
        axes[1, 0].set_yscale("log")
        lo, hi = rec.series("gamma_min", norms), rec.series("gamma_max", norms)
        for n in norms:
            axes[1, 1].fill_between(rec.steps, lo[n], hi[n], alpha=0.3, label=n)
        axes[1, 1].set(xlabel="step", ylabel="γ", title="γ range (min to max)")
        out["Normalization health"] = fig
    if rec.noise:
        g = rec.noise[-1]
        fig = Figure(figsize=(13, 4.5), layout="constrained")
        ax = fig.subplots()
        names = list(g.layers)
        ax.bar(range(len(names)), [max(g.layers[n], 1e-6) for n in names], color="tab:blue")
        ax.axhline(1.0, color="tab:red", ls="--", lw=1)
        ax.set(
            yscale="log",
            ylabel="‖G‖² / (tr Σ / B)",
            title=f"gradient signal-to-noise per layer (step {g.step}, batch {g.batch}; "
            "dashed: signal = noise)",
        )
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7, ha="right")
        out["Gradient noise"] = fig
    if rec.curvature:
        fig = Figure(figsize=(13, 4.5), layout="constrained")
        ax = fig.subplots()
        cs = rec.curvature
        ax.plot([c.step for c in cs], [c.bound for c in cs], marker="o", label="2(1+β)/λ")
        lrs = [(c.step, c.lr) for c in cs if c.lr is not None]
        if lrs:
            ax.plot(*zip(*lrs, strict=True), marker="x", ls="--", label="learning rate")
        ax.set(
            yscale="log",
            xlabel="step",
            ylabel="learning rate",
            title="learning rate vs the curvature stability bound",
        )
        ax.legend(fontsize=8)
        out["Curvature"] = fig
    return out


def plot_recorder(rec: Recording, path: str | Path) -> Path:
    """Save :meth:`Recorder.plot`'s figure (format from the suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _figure(rec).savefig(path, dpi=110)
    return path


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l{text-align:left}
.error{color:#b00;font-weight:bold}.warning{color:#a60}.info{color:#06a}
img{max-width:100%}
"""


def html_report(
    rec: Recording,
    path: str | Path,
    findings: Sequence[Finding],
    *,
    title: str = "normkit doctor report",
    extra: Sequence[Finding] = (),
) -> Path:
    """Write a self-contained HTML page: findings, one figure per instrument (embedded base64
    PNGs), the instrument measurements and the per-layer tables (no external files or
    scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<p>{len(rec.steps)} recorded steps (every {rec.every}), {len(rec.layers)} watched "
        f"layers of {e(rec.model_name)}.</p><h2>Findings</h2>",
    ]
    all_findings = sort_findings([*findings, *extra])
    if all_findings:
        parts.append(
            "<table><tr><th>severity</th><th>finding</th><th>layer</th><th>step</th>"
            "<th>what was measured</th><th>fix</th></tr>"
        )
        for f in all_findings:
            parts.append(
                f"<tr><td class='l {f.severity}'>{f.severity}</td><td class='l'>{e(f.code)}</td>"
                f"<td class='l'>{e(f.layer or '-')}</td>"
                f"<td>{'-' if f.step is None else f.step}</td>"
                f"<td class='l'>{e(f.message)}</td><td class='l'>{e(f.fix)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No findings.</p>")
    for name, fig in figures(rec).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f"<h2>{e(name)}</h2>")
        parts.append(f"<img alt='{e(name.lower())}' src='data:image/png;base64,{png}'>")
    lines = instrument_lines(rec)
    if lines:
        parts.append("<h2>On-demand measurements</h2><ul>")
        parts += [f"<li>{e(line)}</li>" for line in lines]
        parts.append("</ul>")
    parts += _html_table(rec, "Per-layer statistics", _COLUMNS, summary_rows(rec))
    if rec.norm_layers:
        parts += _html_table(rec, "Normalization health", _NORM_COLUMNS, norm_rows(rec))
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _html_table(
    rec: Recording, title: str, columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]
) -> list[str]:
    e = html.escape
    parts = [f"<h2>{e(title)}</h2><table><tr>"]
    parts += [f"<th>{e(label)}</th>" for _, label in columns]
    parts.append("</tr>")
    for row in rows:
        cells = "".join(
            f"<td{' class=l' if k in ('layer', 'kind') else ''}>{e(_fmt(k, row[k]))}</td>"
            for k, _ in columns
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return parts
