"""Showing a recorded run: rich tables, the gradient-flow figure and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normkit.diagnostics._findings import Finding, render_findings, sort_findings

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from normkit.diagnostics._recorder import Recorder

__all__ = ["html_report", "plot_recorder", "print_report", "summary_rows"]


def _median(xs: Sequence[float]) -> float:
    f = [x for x in xs if not math.isnan(x)]
    return statistics.median(f) if f else math.nan


def _last(xs: Sequence[float]) -> float:
    f = [x for x in xs if not math.isnan(x)]
    return f[-1] if f else math.nan


def summary_rows(rec: Recorder) -> list[dict[str, Any]]:
    """One row per watched layer: last activation mean/std, last dead/saturated fraction and the
    medians over the recorded steps of the output-gradient norm, the parameter-gradient norm and
    the update ratio (``nan`` where not applicable)."""
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
)


def _fmt(key: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "-"
    if key in ("dead_frac", "saturated_frac"):
        return f"{v:.0%}"
    return f"{v:.3g}"


def print_report(
    rec: Recorder, findings: Sequence[Finding], *, console: Console | None = None
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
    render_findings(findings, console=console)


def _figure(rec: Recorder) -> Figure:
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


def plot_recorder(rec: Recorder, path: str | Path) -> Path:
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
    rec: Recorder,
    path: str | Path,
    findings: Sequence[Finding],
    *,
    title: str = "normkit doctor report",
    extra: Sequence[Finding] = (),
) -> Path:
    """Write a self-contained HTML page: findings, per-layer table and the figure as an
    embedded base64 PNG (no external files or scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _figure(rec).savefig(buf, format="png", dpi=100)
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<p>{len(rec.steps)} recorded steps (every {rec.every}), {len(rec.layers)} watched "
        f"layers of {e(type(rec.model).__name__)}.</p><h2>Findings</h2>",
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
    parts.append("<h2>Gradient flow</h2>")
    parts.append(f"<img alt='gradient flow' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Per-layer statistics</h2><table><tr>")
    parts += [f"<th>{e(label)}</th>" for _, label in _COLUMNS]
    parts.append("</tr>")
    for row in summary_rows(rec):
        cells = "".join(
            f"<td{' class=l' if k in ('layer', 'kind') else ''}>{e(_fmt(k, row[k]))}</td>"
            for k, _ in _COLUMNS
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table></body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path
