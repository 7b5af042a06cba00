"""``normkit tune``'s grid and the table shipped with normkit: every op ``tune`` measures has a
measured choice in the shipped table, for each direction, layout and default size (an op left
out runs on torch everywhere, whatever its kernels would win), and every cell can be measured."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from normkit import backends
from normkit.bench.tune import DEFAULT_SIZES, TUNED_OPS, cells, measure_cell


def _shipped() -> list[dict[str, object]]:
    text = resources.files("normkit.backends").joinpath("auto_table.json").read_text()
    return json.loads(text)["rows"]


def test_the_shipped_table_covers_every_cell_tune_measures() -> None:
    have = {(r["op"], r["dir"], r["layout"], r["numel"]) for r in _shipped()}
    want = {(c.op, c.direction, c.layout, 1 << c.log2) for c in cells(DEFAULT_SIZES)}
    assert not want - have, sorted(want - have)[:10]


def test_the_shipped_table_names_known_backends_and_a_speedup_where_it_leaves_torch() -> None:
    for r in _shipped():
        assert r["backend"] in ("torch", "numba"), r
        if r["backend"] != "torch":
            assert float(r["speedup"]) >= 1.0, r  # (smoothing may keep a neighbour's choice)


@pytest.mark.parametrize("op", TUNED_OPS)
def test_every_op_of_the_grid_can_be_measured(op: str) -> None:
    contenders = [b for b in backends.available() if b not in ("reference", "torch")]
    for cell in cells([13], [op]):
        times = measure_cell(cell, contenders, reps=1)
        assert times["torch"] > 0 and all(t > 0 for t in times.values()), (cell, times)


def test_tune_measures_every_op_a_cpu_kernel_backend_implements() -> None:
    """An op a kernel backend implements but ``tune`` does not measure would stay on torch
    under ``auto`` whatever its kernels win (DyT, modulate and the Llama-cast RMSNorm did:
    2.5-3.7x left on the table at 2^20+ values)."""
    for name in backends.available():
        if name in ("reference", "torch"):
            continue
        ops = set(backends.get(name).ops)
        assert ops <= set(TUNED_OPS), (name, sorted(ops - set(TUNED_OPS)))
