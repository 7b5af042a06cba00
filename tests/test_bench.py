"""The benchmark harness: suite registry, CLI wiring, metrics and report writers."""

from __future__ import annotations

import csv

import pytest

from normkit.bench import (
    copy_baseline,
    get_suite,
    load_suites,
    measure,
    register_suite,
    row_metrics,
    suite_names,
    write_csv,
)
from normkit.cli import build_parser, main


def _demo_suite(quick: bool, reps: int | None = None) -> list[dict]:
    return [{"op": "demo", "quick": quick, "reps": reps, "ms": 1.5}]


def test_registry_and_cli_flag(tmp_path, capsys):
    register_suite("demo-suite", _demo_suite, "a test suite")
    register_suite("demo-suite", _demo_suite, "a test suite")  # re-import is a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_suite("demo-suite", lambda quick: [], "other")
    assert "demo-suite" in suite_names()
    assert get_suite("demo-suite").options() == {"reps"}
    out = tmp_path / "rows.csv"
    rc = main(["bench", "--demo-suite", "--quick", "--reps", "4", "--csv", str(out)])
    assert rc == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"suite": "demo-suite", "op": "demo", "quick": "True", "reps": "4", "ms": "1.5"}
    ]
    assert "demo" in capsys.readouterr().out


def test_default_suite_is_kernels():
    load_suites()
    assert suite_names()[0] == "kernels"
    args = build_parser().parse_args(["bench", "--quick"])
    assert args.quick and not args.compile


def test_unknown_suite_error_says_choices():
    with pytest.raises(ValueError, match="expected one of"):
        get_suite("nope")


def test_row_metrics_analytic():
    # 1 GB moved in 0.5 s; copy took 0.25 s; baseline 1 s.
    m = row_metrics(10**9, 0.5, 0.25, 1.0)
    assert m == {"ms": 500.0, "GB/s": 2.0, "% copy": 50.0, "speedup": 2.0}


def test_measure_counts_calls_and_reports_median():
    calls = []
    t = measure(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 2 + 5 - 1 + 1  # first call + (warmup-1) + reps
    assert t.reps == 5 and t.min <= t.median
    assert copy_baseline(1 << 16, reps=3).median > 0


def test_write_csv_union_of_keys(tmp_path):
    p = write_csv([{"a": 1}, {"a": 2, "b": "x"}], tmp_path / "sub" / "r.csv")
    assert p.read_text().splitlines() == ["a,b", "1,", "2,x"]


def test_bytes_moved_counts_each_big_array_once():
    from normkit.bench.kernels import BenchSpec, _bytes_moved, _make_case

    ln = BenchSpec("layer_norm", (64, 32))
    assert _bytes_moved(ln, _make_case(ln)) == 2 * 64 * 32 * 4  # read x, write y
    add = BenchSpec("add_rms_norm", (64, 32), direction="fwd+bwd")
    # fwd: read x, r; write y, s. bwd: read s, dy, ds; write dx.
    assert _bytes_moved(add, _make_case(add)) == 8 * 64 * 32 * 4


def test_keep_freed_memory_in_a_subprocess():
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from normkit.bench.alloc import keep_freed_memory\n"
        "ok = keep_freed_memory()\n"
        "x = torch.ones(1 << 24); y = torch.empty_like(x).copy_(x); del y\n"
        "z = torch.empty_like(x).copy_(x)\n"
        "assert float(z.sum()) == float(1 << 24)\n"
        "print(ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert out.stdout.strip() == expected


def test_measure_interleaved_alternates_calls():
    from normkit.bench import measure_interleaved

    log: list[str] = []
    calls = {
        "a": (lambda: log.append("a"), lambda: log.append("setup")),
        "b": (lambda: log.append("b"), None),
    }
    t = measure_interleaved(calls, reps=3, warmup=2)
    assert set(t) == {"a", "b"} and t["a"].reps == 3
    timed = [e for e in log[6:]]  # after warm-up: 2 x (setup, a) + 2 x b
    assert timed == ["setup", "a", "b"] * 3


@pytest.mark.parametrize("op", ["rms_norm_llama", "dyt", "modulate"])
def test_transformer_bench_rows_time_the_same_computation(op):
    """The torch-eager baseline of each transformer row computes what normkit's call does."""
    from normkit import backends
    from normkit.bench.kernels import BenchSpec, _make_case, _normkit_fn, _torch_fn

    spec = BenchSpec(op, (4, 6, 32) if op == "modulate" else (24, 32))
    case = _make_case(spec)
    args = [*case.inputs, *case.params]
    want = _torch_fn(spec, case)(*args)
    for b in backends.available():
        got = _normkit_fn(spec, case, b)(*args)
        assert (got - want).abs().max().item() < 1e-5, b
