"""Run lab experiments: split them into tasks, spread the tasks over worker processes, show rich
progress per experiment and overall, cache finished work in ``--out`` and resume unfinished work.

Cache layout (under ``<out>/cache``): ``<id>-<hash>.json`` holds the records of a finished
experiment; ``<id>-<hash>.partial.jsonl`` gets one line per finished task while it runs, so an
interrupted run resumes where it stopped. ``<hash>`` covers the experiment's id, protocol version,
parameters and seeds (:func:`normkit.lab.config.config_hash`); change any of them and the work is
redone.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normkit._optional import installed
from normkit.lab.config import LabConfig, config_hash
from normkit.lab.experiment import Experiment, Record, experiment_ids, get_experiment
from normkit.lab.verdict import CheckResult, decide, evaluate

__all__ = ["ExperimentResult", "run_experiment_tasks", "run_lab", "run_task", "select"]


@dataclass
class ExperimentResult:
    """Everything the report shows about one experiment."""

    id: str
    title: str
    claim: str
    source: str
    setup: str
    params: dict[str, Any]
    seeds: list[int]
    config_hash: str
    records: list[Record]
    table: list[dict[str, Any]]
    checks: list[CheckResult]
    verdict: str
    notes: list[str] = field(default_factory=list)
    compute_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cached: bool = False
    command: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "claim": self.claim,
            "source": self.source,
            "setup": self.setup,
            "params": self.params,
            "seeds": self.seeds,
            "config_hash": self.config_hash,
            "verdict": self.verdict,
            "checks": [c.as_dict() for c in self.checks],
            "table": self.table,
            "notes": self.notes,
            "compute_seconds": self.compute_seconds,
            "cpu_seconds": self.cpu_seconds,
            "cached": self.cached,
            "command": self.command,
            "records": self.records,
        }


def select(only: Sequence[str]) -> list[Experiment]:
    """The experiments named in ``only`` (all when empty), in registry order."""
    ids = experiment_ids()
    unknown = [i for i in only if i not in ids]
    if unknown:
        raise ValueError(f"unknown experiment id(s) {unknown}; expected some of {ids}")
    return [get_experiment(i) for i in ids if not only or i in only]


def _key(task: Record) -> str:
    return json.dumps(task, sort_keys=True)


def run_task(exp_id: str, params: dict[str, Any], task: Record) -> Record:
    """Run one task of experiment ``exp_id`` (top-level so worker processes can unpickle it)."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec = get_experiment(exp_id).run(params, task)
    rec["_seconds"] = time.perf_counter() - t0
    rec["_cpu_seconds"] = time.process_time() - c0
    rec["_task"] = _key(task)
    return rec


def _set_threads(n: int) -> int:
    """Set torch's (and numba's, when installed) intra-op threads to ``n``; return torch's old
    count. Numba matters: its OpenMP launches reset the shared runtime's thread count, so a
    numba kernel picked by ``backend="auto"`` would otherwise bring back 2+ threads per worker."""
    old = torch.get_num_threads()
    if installed("numba"):  # first: starting numba's OpenMP layer resets the shared thread count
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)
    return old


def _worker_init() -> None:
    _set_threads(1)


def _finish(
    exp: Experiment,
    cfg: LabConfig,
    params: dict[str, Any],
    h: str,
    records: list[Record],
    cached: bool,
) -> ExperimentResult:
    analysis = exp.analyze(params, records)
    checks = [evaluate(c) for c in analysis.checks]
    return ExperimentResult(
        id=exp.id,
        title=exp.title,
        claim=exp.claim,
        source=exp.source,
        setup=exp.describe(params),
        params=params,
        seeds=cfg.seed_list,
        config_hash=h,
        records=records,
        table=analysis.table,
        checks=checks,
        verdict=decide(checks),
        notes=analysis.notes,
        compute_seconds=sum(float(r.get("_seconds", 0.0)) for r in records),
        cpu_seconds=sum(float(r.get("_cpu_seconds", 0.0)) for r in records),
        cached=cached,
        command=cfg.command([exp.id]),
    )


@dataclass
class _Plan:
    exp: Experiment
    params: dict[str, Any]
    hash: str
    tasks: list[Record]
    done: dict[str, Record]
    cache_file: Path
    partial_file: Path
    cached: bool


def _plan(exp: Experiment, cfg: LabConfig, cache_dir: Path) -> _Plan:
    params = json.loads(json.dumps(dict(exp.params(cfg.scale))))
    h = config_hash(exp.id, exp.version, params, cfg.seed_list)
    tasks = exp.tasks(params, cfg.seed_list)
    keys = {_key(t) for t in tasks}
    if len(keys) != len(tasks):
        raise ValueError(f"experiment {exp.id!r} lists duplicate tasks")
    cache_file = cache_dir / f"{exp.id}-{h}.json"
    partial = cache_dir / f"{exp.id}-{h}.partial.jsonl"
    done: dict[str, Record] = {}
    cached = False
    if cfg.force:
        cache_file.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    elif cache_file.exists():
        for rec in json.loads(cache_file.read_text())["records"]:
            done[rec["_task"]] = rec
        cached = True
    elif partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("_task") in keys:
                    done[rec["_task"]] = rec
    return _Plan(exp, params, h, tasks, done, cache_file, partial, cached)


def run_experiment_tasks(
    plans: list[_Plan], jobs: int, on_done: Callable[[_Plan, Record], None]
) -> None:
    """Run every pending task of ``plans`` with ``jobs`` processes (1 = here), calling
    ``on_done(plan, record)`` as each finishes."""
    pending = [(p, t) for p in plans for t in p.tasks if _key(t) not in p.done]
    if not pending:
        return
    if jobs == 1:
        threads = _set_threads(1)
        try:
            for p, t in pending:
                on_done(p, run_task(p.exp.id, p.params, t))
        finally:
            _set_threads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init) as pool:
        futures: dict[Future[Record], _Plan] = {
            pool.submit(run_task, p.exp.id, p.params, t): p for p, t in pending
        }
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in finished:
                on_done(futures[f], f.result())


def run_lab(cfg: LabConfig) -> list[ExperimentResult]:
    """Run (or load from cache) every selected experiment and return their results.

    Writing the report is separate: :func:`normkit.lab.report.write_report`.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    cache_dir = cfg.out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    plans = [_plan(e, cfg, cache_dir) for e in select(cfg.only)]
    results: dict[str, ExperimentResult] = {}

    def finalize(p: _Plan) -> None:
        order = {_key(t): i for i, t in enumerate(p.tasks)}
        records = sorted(p.done.values(), key=lambda r: order[r["_task"]])
        if not p.cached:
            p.cache_file.write_text(json.dumps({"id": p.exp.id, "records": records}))
            p.partial_file.unlink(missing_ok=True)
        results[p.exp.id] = _finish(p.exp, cfg, p.params, p.hash, records, p.cached)

    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not cfg.progress,
    ) as progress:
        total = sum(len(p.tasks) for p in plans)
        overall = progress.add_task("[bold]all experiments", total=total, status="", completed=0)
        bars = {}
        for p in plans:
            n_done = len(p.done)
            status = "cached" if p.cached else ("resumed" if n_done else "")
            bars[p.exp.id] = progress.add_task(
                p.exp.id, total=len(p.tasks), completed=n_done, status=status
            )
            progress.advance(overall, n_done)
            if n_done == len(p.tasks):
                finalize(p)
                progress.update(bars[p.exp.id], status=f"{status} {results[p.exp.id].verdict}")

        def on_done(p: _Plan, rec: Record) -> None:
            p.done[rec["_task"]] = rec
            with p.partial_file.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            progress.advance(bars[p.exp.id])
            progress.advance(overall)
            if len(p.done) == len(p.tasks):
                finalize(p)
                progress.update(bars[p.exp.id], status=results[p.exp.id].verdict)

        run_experiment_tasks(plans, cfg.jobs, on_done)
    return [results[p.exp.id] for p in plans]
