"""The lab's verdict rule on synthetic result tables (oracle: hand-computed statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normkit.lab.verdict import Check, decide, evaluate


def _check(a, b, **kw):
    return Check("c", "m", a, b, **kw)


def test_statistics_match_numpy():
    a, b = [0.95, 0.96, 0.97, 0.91], [0.90, 0.85, 0.93]
    r = evaluate(_check(a, b))
    se = math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3)
    assert r.mean_claimed == pytest.approx(np.mean(a))
    assert r.std_claimed == pytest.approx(np.std(a, ddof=1))
    assert r.mean_baseline == pytest.approx(np.mean(b))
    assert r.std_baseline == pytest.approx(np.std(b, ddof=1))
    assert r.se == pytest.approx(se)
    assert r.diff == pytest.approx(np.mean(a) - np.mean(b))


@pytest.mark.parametrize(
    ("a", "b", "direction", "margin", "want"),
    [
        # means 2 vs 1, stds 1 → se = sqrt(2/3) ≈ 0.816: d = 1 < 2·se ≈ 1.63
        ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], "higher", 0.0, "inconclusive"),
        # d = 10 ≫ 2·se
        ([11.0, 12.0, 13.0], [1.0, 2.0, 3.0], "higher", 0.0, "supported"),
        ([1.0, 2.0, 3.0], [11.0, 12.0, 13.0], "higher", 0.0, "contradicted"),
        # lower is better: the claimed arm is lower by 10 → supported
        ([1.0, 2.0, 3.0], [11.0, 12.0, 13.0], "lower", 0.0, "supported"),
        # zero spread: any positive difference beats 2·se = 0, unless below the margin
        ([0.5, 0.5], [0.4, 0.4], "higher", 0.0, "supported"),
        ([0.5, 0.5], [0.4, 0.4], "higher", 0.2, "inconclusive"),
        ([0.4, 0.4], [0.5, 0.5], "higher", 0.2, "inconclusive"),
        ([0.4, 0.4], [0.5, 0.5], "higher", 0.05, "contradicted"),
        # equal arms → inconclusive
        ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], "higher", 0.0, "inconclusive"),
    ],
)
def test_better_rule(a, b, direction, margin, want):
    assert evaluate(_check(a, b, direction=direction, margin=margin)).outcome == want


@pytest.mark.parametrize(
    ("a", "b", "margin", "want"),
    [
        # d = −0.005, se = 0 → lower bound −0.005 > −0.01 → supported
        ([0.945, 0.945], [0.95, 0.95], 0.01, "supported"),
        # d = −0.05, se = 0 → upper bound −0.05 < −0.01 → contradicted
        ([0.90, 0.90], [0.95, 0.95], 0.01, "contradicted"),
        # d = 0, large spread: lower bound far below −margin, upper above → inconclusive
        ([0.8, 1.0], [0.8, 1.0], 0.01, "inconclusive"),
        # claimed arm clearly better also passes non-inferiority
        ([0.99, 0.98], [0.90, 0.91], 0.0, "supported"),
    ],
)
def test_noninferior_rule(a, b, margin, want):
    assert evaluate(_check(a, b, kind="noninferior", margin=margin)).outcome == want


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=2, max_size=6),
    st.lists(st.floats(-100, 100), min_size=2, max_size=6),
)
def test_direction_symmetry(a, b):
    """Swapping the arms and the direction flips supported ↔ contradicted (an invariance of the
    rule, not a re-implementation)."""
    flip = {
        "supported": "contradicted",
        "contradicted": "supported",
        "inconclusive": "inconclusive",
    }
    r1 = evaluate(_check(a, b, direction="higher", margin=0.1)).outcome
    r2 = evaluate(_check(b, a, direction="higher", margin=0.1)).outcome
    r3 = evaluate(_check(a, b, direction="lower", margin=0.1)).outcome
    assert r2 == flip[r1]
    assert r3 == flip[r1]


def _res(outcome_values, primary=True):
    # build results with known outcomes: supported (10 vs 0), contradicted (0 vs 10), inconclusive
    table = {
        "supported": ([10, 10], [0, 0]),
        "contradicted": ([0, 0], [10, 10]),
        "inconclusive": ([1, 2], [1, 2]),
    }
    out = []
    for o in outcome_values:
        a, b = table[o]
        r = evaluate(Check(o, "m", a, b, primary=primary))
        assert r.outcome == o
        out.append(r)
    return out


@pytest.mark.parametrize(
    ("outcomes", "want"),
    [
        (["supported"], "supported"),
        (["supported", "supported"], "supported"),
        (["supported", "inconclusive"], "mixed"),
        (["supported", "contradicted"], "mixed"),
        (["inconclusive", "contradicted"], "not supported"),
        (["inconclusive"], "not supported"),
    ],
)
def test_decide(outcomes, want):
    assert decide(_res(outcomes)) == want


def test_secondary_checks_do_not_change_the_verdict():
    res = _res(["supported"]) + _res(["contradicted", "inconclusive"], primary=False)
    assert decide(res) == "supported"
    with pytest.raises(ValueError, match="primary"):
        decide(_res(["supported"], primary=False))


def test_bad_checks_are_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        _check([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        _check([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="direction"):
        _check([1.0, 2.0], [1.0, 2.0], direction="up")
    with pytest.raises(ValueError, match="margin"):
        _check([1.0, 2.0], [1.0, 2.0], margin=-1)
