"""The verdict rule of the lab, written down before any run and applied by code, not by hand.

A claim is tested by one or more :class:`Check` objects. Each compares a metric between the arm
the claim favours (``claimed``) and the arm it is measured against (``baseline``), one value per
seed, in a stated direction (``"higher"`` or ``"lower"`` is better).

Let ``d = mean(claimed) − mean(baseline)`` (sign flipped when lower is better, so ``d > 0`` always
means "in the claimed direction") and ``se = sqrt(s²_claimed/n_claimed + s²_baseline/n_baseline)``
(sample standard deviations, ``ddof=1``: the standard error of a difference of two means).

* ``kind="better"`` (the claim says the arm is better): **supported** when ``d > 2·se`` and
  ``d > margin``; **contradicted** when ``−d > 2·se`` and ``−d > margin``; otherwise
  **inconclusive**.
* ``kind="noninferior"`` (the claim says the arm is not worse, e.g. "BN can replace dropout"):
  **supported** when ``d − 2·se > −margin`` (the lower 2-SE bound of the difference stays above
  the allowed loss); **contradicted** when ``d + 2·se < −margin``; otherwise **inconclusive**.

An experiment's verdict comes from its primary checks: **supported** when every primary check is
supported, **not supported** when none is, **mixed** otherwise. Secondary checks are reported
alongside (context, e.g. "does the fix help?") but do not decide the verdict.

>>> c = Check("BN wins", "test acc", [0.95, 0.96, 0.95], [0.90, 0.91, 0.89], direction="higher")
>>> evaluate(c).outcome
'supported'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "OUTCOMES",
    "RULE_TEXT",
    "VERDICTS",
    "Check",
    "CheckResult",
    "decide",
    "evaluate",
]

Direction = Literal["higher", "lower"]
Kind = Literal["better", "noninferior"]
Outcome = Literal["supported", "contradicted", "inconclusive"]
Verdict = Literal["supported", "not supported", "mixed"]

OUTCOMES: tuple[str, ...] = ("supported", "contradicted", "inconclusive")
VERDICTS: tuple[str, ...] = ("supported", "not supported", "mixed")

RULE_TEXT = (
    "Each claim is tested by checks comparing one metric between the arm the claim favours and "
    "its baseline, one value per seed. d = mean(claimed) − mean(baseline), signed so that d > 0 "
    "is the claimed direction; se = sqrt(s²_a/n_a + s²_b/n_b) (sample std, ddof=1). "
    "A 'better' check is supported when d > 2·se and d > its margin, contradicted when −d > 2·se "
    "and −d > its margin, inconclusive otherwise. A 'not worse' (non-inferiority) check is "
    "supported when d − 2·se > −margin, contradicted when d + 2·se < −margin, inconclusive "
    "otherwise. Verdict from the primary checks: supported when all are supported, not supported "
    "when none is, mixed otherwise. Secondary checks are context and do not change the verdict."
)


@dataclass(frozen=True)
class Check:
    """One comparison: per-seed values of the ``claimed`` arm against the ``baseline`` arm.

    ``margin`` is the smallest effect that counts for ``kind="better"`` and the largest loss
    allowed for ``kind="noninferior"`` (in the metric's units). Values must be finite: map a
    diverged run to a finite worst value (e.g. chance accuracy) before building the check.
    """

    name: str
    metric: str
    claimed: Sequence[float]
    baseline: Sequence[float]
    direction: Direction = "higher"
    kind: Kind = "better"
    margin: float = 0.0
    primary: bool = True
    claimed_label: str = ""
    baseline_label: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower' (got {self.direction!r})")
        if self.kind not in ("better", "noninferior"):
            raise ValueError(f"kind must be 'better' or 'noninferior' (got {self.kind!r})")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0 (got {self.margin})")
        for label, vals in (("claimed", self.claimed), ("baseline", self.baseline)):
            if len(vals) < 2:
                raise ValueError(
                    f"check {self.name!r}: {label} needs values from at least 2 seeds to "
                    f"estimate a standard error (got {len(vals)}); run with --seeds 2 or more"
                )
            if not all(math.isfinite(float(v)) for v in vals):
                raise ValueError(
                    f"check {self.name!r}: {label} values must be finite (got {list(vals)}); "
                    "map diverged runs to a finite worst value first"
                )


@dataclass(frozen=True)
class CheckResult:
    """A :class:`Check` with its statistics and outcome."""

    check: Check
    mean_claimed: float
    std_claimed: float
    mean_baseline: float
    std_baseline: float
    diff: float
    se: float
    outcome: Outcome
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        c = self.check
        return {
            "name": c.name,
            "metric": c.metric,
            "direction": c.direction,
            "kind": c.kind,
            "margin": c.margin,
            "primary": c.primary,
            "claimed_label": c.claimed_label,
            "baseline_label": c.baseline_label,
            "claimed": [float(v) for v in c.claimed],
            "baseline": [float(v) for v in c.baseline],
            "mean_claimed": self.mean_claimed,
            "std_claimed": self.std_claimed,
            "mean_baseline": self.mean_baseline,
            "std_baseline": self.std_baseline,
            "diff": self.diff,
            "se": self.se,
            "outcome": self.outcome,
        }


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    xs = [float(v) for v in vals]
    m = math.fsum(xs) / len(xs)
    var = math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var)


def evaluate(check: Check) -> CheckResult:
    """Apply the rule (module docstring) to one check."""
    ma, sa = _mean_std(check.claimed)
    mb, sb = _mean_std(check.baseline)
    sign = 1.0 if check.direction == "higher" else -1.0
    d = sign * (ma - mb)
    se = math.sqrt(sa**2 / len(check.claimed) + sb**2 / len(check.baseline))
    m = check.margin
    outcome: Outcome
    if check.kind == "better":
        if d > 2 * se and d > m:
            outcome = "supported"
        elif -d > 2 * se and -d > m:
            outcome = "contradicted"
        else:
            outcome = "inconclusive"
    else:
        if d - 2 * se > -m:
            outcome = "supported"
        elif d + 2 * se < -m:
            outcome = "contradicted"
        else:
            outcome = "inconclusive"
    return CheckResult(check, ma, sa, mb, sb, d, se, outcome)


def decide(results: Sequence[CheckResult]) -> Verdict:
    """The experiment's verdict from its primary checks (see the module docstring)."""
    primary = [r for r in results if r.check.primary]
    if not primary:
        raise ValueError("a verdict needs at least one primary check (got none)")
    n_ok = sum(r.outcome == "supported" for r in primary)
    if n_ok == len(primary):
        return "supported"
    if n_ok == 0:
        return "not supported"
    return "mixed"
