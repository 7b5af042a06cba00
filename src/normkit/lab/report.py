"""The lab's report: ``results.json``, ``<id>.csv`` and ``<id>.png`` per experiment, and a
self-contained ``index.html`` (images embedded as base64) with, per experiment, the claim, the
setup, the plot, the table, the checks, the verdict and the command that reproduces it."""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from normkit._optional import require
from normkit.lab.config import LabConfig
from normkit.lab.experiment import get_experiment
from normkit.lab.runner import ExperimentResult
from normkit.lab.verdict import RULE_TEXT

__all__ = ["summary_markdown", "write_report"]

_BADGE = {"supported": "#1a7f37", "not supported": "#cf222e", "mixed": "#9a6700"}
_OUTCOME = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#57606a"}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def _table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    cols = _table_columns(rows)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def _write_png(path: Path, res: ExperimentResult) -> None:
    require("matplotlib", extra="lab", feature="normkit lab").use("Agg")
    from matplotlib.figure import Figure

    exp = get_experiment(res.id)
    fig = Figure(figsize=(12, 3.6), dpi=90, layout="constrained")
    exp.plot(res.params, res.records, fig)
    fig.suptitle(f"{res.id}: {res.title}", fontsize=10)
    fig.savefig(path)


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in _table_columns(rows) if not c.endswith("_std")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            s = _fmt(v)
            if f"{c}_std" in r:
                s += f" ± {_fmt(r[f'{c}_std'])}"
            cells.append(f"<td>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _checks_table(res: ExperimentResult) -> str:
    rows = []
    for c in res.checks:
        k = c.check
        rel = (
            "≥ (−margin)"
            if k.kind == "noninferior"
            else ("higher" if k.direction == "higher" else "lower")
        )
        rows.append(
            "<tr>"
            f"<td>{html.escape(k.name)}{'' if k.primary else ' <i>(secondary)</i>'}</td>"
            f"<td>{html.escape(k.metric)} ({rel}, margin {_fmt(k.margin)})</td>"
            f"<td>{html.escape(k.claimed_label)}: {_fmt(c.mean_claimed)} ± "
            f"{_fmt(c.std_claimed)}</td>"
            f"<td>{html.escape(k.baseline_label)}: {_fmt(c.mean_baseline)} ± "
            f"{_fmt(c.std_baseline)}</td>"
            f"<td>{_fmt(c.diff)} (2·se = {_fmt(2 * c.se)})</td>"
            f"<td style='color:{_OUTCOME[c.outcome]};font-weight:bold'>{c.outcome}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>check</th><th>metric</th><th>claimed arm</th><th>baseline</th>"
        "<th>d (claimed direction)</th><th>outcome</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{margin-bottom:0} .sub{color:#57606a}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa} .badge{color:#fff;padding:2px 8px;border-radius:10px;font-size:13px}
section{border-top:2px solid #d0d7de;margin-top:2em;padding-top:.5em}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px} img{max-width:100%}
.rule{background:#f6f8fa;padding:.7em;border-radius:6px;font-size:14px}
"""


def _badge(verdict: str) -> str:
    return f"<span class='badge' style='background:{_BADGE[verdict]}'>{verdict}</span>"


def _html(results: Sequence[ExperimentResult], cfg: LabConfig, meta: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>normkit lab report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>normkit lab</h1>",
        f"<p class='sub'>{cfg.scale} run, seeds "
        f"{cfg.seed_list}, command <code>{html.escape(cfg.command())}</code>; "
        f"torch {html.escape(meta['torch'])}, {html.escape(meta['machine'])}; "
        f"wall time {meta['wall_seconds']:.1f} s, {meta['cpu_seconds']:.1f} CPU s in tasks"
        + (f", load average {load:.1f} at the start" if (load := meta["load_average"]) else "")
        + ".</p>",
        f"<h2>Verdict rule</h2><p class='rule'>{html.escape(RULE_TEXT)}</p>",
        "<h2>Summary</h2><table><tr><th>experiment</th><th>claim</th><th>verdict</th>"
        "<th>checks supported</th></tr>",
    ]
    for r in results:
        prim = [c for c in r.checks if c.check.primary]
        ok = sum(c.outcome == "supported" for c in prim)
        parts.append(
            f"<tr><td><a href='#{r.id}'>{r.id}</a></td><td>{html.escape(r.claim)}</td>"
            f"<td>{_badge(r.verdict)}</td><td>{ok}/{len(prim)}</td></tr>"
        )
    parts.append("</table>")
    for r in results:
        png = cfg.out / f"{r.id}.png"
        img = base64.b64encode(png.read_bytes()).decode()
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
        parts += [
            f"<section id='{r.id}'><h2>{html.escape(r.id)}: {html.escape(r.title)} "
            f"{_badge(r.verdict)}</h2>",
            f"<p><b>Claim.</b> {html.escape(r.claim)}<br><b>Source.</b> {html.escape(r.source)}</p>",
            f"<p><b>Setup.</b> {html.escape(r.setup)}</p>",
            f"<img alt='{r.id} plot' src='data:image/png;base64,{img}'>",
            "<h3>Checks</h3>",
            _checks_table(r),
            f"<p><b>Verdict:</b> {_badge(r.verdict)} (rule above; primary checks only)</p>",
            "<h3>Results (mean ± std over seeds)</h3>",
            _html_table(r.table),
            f"<ul>{notes}</ul>" if notes else "",
            f"<p>Reproduce: <code>{html.escape(r.command)}</code> · data: <code>{r.id}.csv"
            f"</code> · {r.cpu_seconds:.1f} CPU s, {r.compute_seconds:.1f} s of task time"
            f"{' (cached)' if r.cached else ''} · "
            f"config hash <code>{r.config_hash}</code></p></section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    results: Sequence[ExperimentResult],
    cfg: LabConfig,
    *,
    wall_seconds: float = 0.0,
    load_average: float | None = None,
) -> Path:
    """Write every file of the report into ``cfg.out`` and return the path of ``index.html``.

    ``wall_seconds`` and ``load_average`` (the 1-minute load when the run started) describe
    the run in the report's header; timings on a shared machine mean little without the load.
    """
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cfg.jobs} worker "
        f"process(es) × 1 torch thread, python {platform.python_version()}",
        "wall_seconds": wall_seconds,
        "cpu_seconds": sum(r.cpu_seconds for r in results),
        "load_average": load_average,
        "scale": cfg.scale,
        "seeds": cfg.seed_list,
        "command": cfg.command(),
    }
    for r in results:
        _write_csv(out / f"{r.id}.csv", r.table)
        _write_png(out / f"{r.id}.png", r)
    (out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "rule": RULE_TEXT, "experiments": [r.as_dict() for r in results]},
            indent=1,
        )
    )
    index = out / "index.html"
    index.write_text(_html(results, cfg, meta))
    return index


def summary_markdown(results: Sequence[ExperimentResult]) -> str:
    """A Markdown table of the verdicts (what the README shows)."""
    lines = ["| experiment | claim | verdict | primary checks supported |", "|---|---|---|---|"]
    for r in results:
        prim = [c for c in r.checks if c.check.primary]
        ok = sum(c.outcome == "supported" for c in prim)
        lines.append(f"| `{r.id}` | {r.claim} | **{r.verdict}** | {ok}/{len(prim)} |")
    return "\n".join(lines)
