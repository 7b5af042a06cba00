"""Typed configuration of a lab run and the cache key of an experiment's configuration."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LabConfig", "config_hash", "default_jobs"]


def default_jobs() -> int:
    """One worker process per core (each runs torch with one thread), at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class LabConfig:
    """What ``normkit lab`` runs.

    ``only``: experiment ids (empty = all); ``seeds``: number of seeds (0, 1, …, seeds−1);
    ``jobs``: worker processes (1 = in this process); ``force``: ignore cached results;
    ``tiny``: the smallest configurations (seconds; for tests and smoke runs).
    """

    quick: bool = False
    only: tuple[str, ...] = ()
    seeds: int = 3
    out: Path = field(default_factory=lambda: Path("lab-report"))
    jobs: int = field(default_factory=default_jobs)
    force: bool = False
    progress: bool = True
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise ValueError(
                f"--seeds must be at least 2 to estimate a standard error (got {self.seeds}); "
                "the default is 3"
            )
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1 (got {self.jobs})")

    @property
    def scale(self) -> str:
        return "tiny" if self.tiny else "quick" if self.quick else "full"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def command(self, exp_ids: Sequence[str] | None = None) -> str:
        """The shell command that reproduces this run (or only ``exp_ids``)."""
        parts = ["normkit", "lab"]
        if self.tiny:
            parts.append("--tiny")
        elif self.quick:
            parts.append("--quick")
        ids = list(exp_ids) if exp_ids is not None else list(self.only)
        if ids:
            parts += ["--only", ",".join(ids)]
        if self.seeds != 3:
            parts += ["--seeds", str(self.seeds)]
        return " ".join(parts)


def config_hash(exp_id: str, version: int, params: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """A short stable hash of everything that determines an experiment's results."""
    blob = json.dumps(
        {"id": exp_id, "version": version, "params": params, "seeds": list(seeds)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
