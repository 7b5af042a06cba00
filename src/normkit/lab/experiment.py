"""What an experiment is, the registry of experiments, and helpers to summarise per-seed records.

An :class:`Experiment` splits its work into small picklable *tasks* (one model trained on one
seed, usually), so the runner can spread them over processes, show progress and resume. Each task
returns a *record* (a JSON-able dict); ``analyze`` turns the records of all tasks into a table and
the :class:`~normkit.lab.verdict.Check` objects that decide the verdict; ``plot`` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from normkit.lab.verdict import Check

__all__ = [
    "Analysis",
    "Experiment",
    "Record",
    "aggregate",
    "experiment_ids",
    "get_experiment",
    "mean_std",
    "register",
    "values",
]

Record = dict[str, Any]
Params = Mapping[str, Any]


@dataclass
class Analysis:
    """``table``: summary rows (one dict each, same keys); ``checks``: the claim's checks."""

    table: list[dict[str, Any]]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    """One claim, how it is measured, and at which scale (``quick``, ``full`` and ``tiny``
    parameters; ``tiny`` is the smallest configuration that runs every code path, for tests).

    ``tasks(params, seeds)`` lists the task dicts (each holds at least ``"seed"``);
    ``run(params, task)`` returns a record; ``analyze(params, records)`` and
    ``plot(params, records, figure)`` summarise. ``describe(params)`` is the setup paragraph
    shown in the report (what was scaled down, and how). Bump ``version`` when the protocol
    changes so cached results are not reused.
    """

    id: str
    title: str
    claim: str
    source: str
    quick: Params
    full: Params
    tiny: Params
    describe: Callable[[Params], str]
    tasks: Callable[[Params, Sequence[int]], list[Record]]
    run: Callable[[Params, Record], Record]
    analyze: Callable[[Params, list[Record]], Analysis]
    plot: Callable[[Params, list[Record], Any], None]
    version: int = 1

    def params(self, scale: str) -> Params:
        """The parameters for ``scale`` (``"quick"``, ``"full"`` or ``"tiny"``)."""
        try:
            return {"quick": self.quick, "full": self.full, "tiny": self.tiny}[scale]
        except KeyError:
            raise ValueError(f"scale must be 'quick', 'full' or 'tiny' (got {scale!r})") from None


_REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry (ids are unique) and return it."""
    if exp.id in _REGISTRY and _REGISTRY[exp.id] is not exp:
        raise ValueError(f"an experiment with id {exp.id!r} is already registered")
    _REGISTRY[exp.id] = exp
    return exp


def _load() -> None:
    import normkit.lab.experiments  # noqa: F401  (registers every experiment)


def experiment_ids() -> list[str]:
    """Ids of every registered experiment, in report order."""
    _load()
    return list(_REGISTRY)


def get_experiment(exp_id: str) -> Experiment:
    """The experiment registered as ``exp_id``."""
    _load()
    try:
        return _REGISTRY[exp_id]
    except KeyError:
        raise ValueError(
            f"unknown experiment {exp_id!r}; expected one of {list(_REGISTRY)} "
            "(see `normkit lab list`)"
        ) from None


def values(records: Iterable[Record], metric: str, **where: Any) -> list[float]:
    """``metric`` of every record matching ``where``, ordered by seed."""
    rows = [r for r in records if all(r.get(k) == v for k, v in where.items())]
    if not rows:
        raise ValueError(f"no records match {where} (metric {metric!r})")
    return [float(r[metric]) for r in sorted(rows, key=lambda r: r["seed"])]


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    m = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(
    records: Sequence[Record], by: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per distinct ``by`` combination (first-seen order): ``metric`` and ``metric_std``."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    rows = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        for m in metrics:
            mu, sd = mean_std([float(r[m]) for r in rs])
            row[m] = mu
            row[f"{m}_std"] = sd
        row["n"] = len(rs)
        rows.append(row)
    return rows
