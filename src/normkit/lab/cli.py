"""``normkit lab``: re-measure the claims about normalization and write an HTML report.

normkit lab [--quick] [--only ID,...] [--seeds N] [--out DIR] [--jobs N] [--force]
normkit lab list
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from normkit._optional import require

__all__ = ["add_parser"]


def _list() -> int:
    from rich.console import Console
    from rich.table import Table

    from normkit.lab.experiment import experiment_ids, get_experiment

    table = Table(title="normkit lab experiments")
    table.add_column("id")
    table.add_column("claim")
    for i in experiment_ids():
        table.add_row(i, get_experiment(i).claim)
    Console().print(table)
    return 0


def _main(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    for module in ("sklearn", "matplotlib"):  # say what is missing before any work
        require(module, extra="lab", feature="normkit lab")
    from rich.console import Console
    from rich.table import Table

    from normkit.lab.config import LabConfig
    from normkit.lab.report import write_report
    from normkit.lab.runner import run_lab, select

    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else ()
    try:
        select(only)
    except ValueError as e:  # a typo in --only: say so, no traceback
        print(f"normkit lab: {e} (see `normkit lab list`)", file=sys.stderr)
        return 2
    cfg = LabConfig(
        quick=args.quick,
        only=only,
        seeds=args.seeds,
        out=Path(args.out),
        jobs=args.jobs if args.jobs is not None else LabConfig().jobs,
        force=args.force,
        tiny=args.tiny,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    results = run_lab(cfg)
    wall = time.perf_counter() - t0
    index = write_report(results, cfg, wall_seconds=wall, load_average=load)
    colors = {"supported": "green", "not supported": "red", "mixed": "yellow"}
    table = Table(title=f"normkit lab ({cfg.scale}, {cfg.seeds} seeds)")
    for col in ("experiment", "verdict", "primary checks", "CPU s"):
        table.add_column(col)
    for r in results:
        prim = [c for c in r.checks if c.check.primary]
        ok = sum(c.outcome == "supported" for c in prim)
        table.add_row(
            r.id,
            f"[{colors[r.verdict]}]{r.verdict}[/]",
            f"{ok}/{len(prim)} supported",
            f"{r.cpu_seconds:.1f}{' (cached)' if r.cached else ''}",
        )
    console = Console()
    console.print(table)
    cpu = sum(r.cpu_seconds for r in results)
    console.print(
        f"wall time {wall:.1f} s; {cpu:.1f} CPU s in tasks"
        + (f"; load average {load:.1f} at the start" if load is not None else "")
    )
    console.print(f"report: {index.resolve()}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lab",
        help="re-measure the claims about normalization on real data (plots + HTML report)",
        description="Train small models on scikit-learn's bundled datasets to test each claim "
        "about normalization over several seeds; write results.json, a CSV and a PNG per "
        "experiment and a self-contained index.html. Finished experiments are cached in --out "
        "and reused (resume).",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("run", "list"),
        default="run",
        help="'list' shows the experiment ids; default: run",
    )
    p.add_argument("--quick", action="store_true", help="small budgets (a few minutes in all)")
    p.add_argument("--only", default="", help="comma-separated experiment ids (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3, minimum 2)")
    p.add_argument("--out", default="lab-report", help="output folder (default lab-report)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes, each with one torch thread (default: one per core, at most 4)",
    )
    p.add_argument("--force", action="store_true", help="ignore cached results and rerun")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smallest configurations: a smoke test in seconds, not meaningful results",
    )
    p.set_defaults(func=_main)
