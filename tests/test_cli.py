"""The ``normkit`` command: every subcommand's help renders (argparse %-formats help strings)."""

from __future__ import annotations

import pytest

from normkit import cli


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("compare", "bench", "tune", "lab", "doctor", "fold"):
        assert name in out


@pytest.mark.parametrize("command", ["compare", "bench", "tune", "lab", "doctor", "fold"])
def test_subcommand_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: normkit " + command in capsys.readouterr().out


def test_compare_runs_and_agrees_with_torch_nn(capsys):
    from normkit.compare import PAIRS, compare_pair

    rows = [
        compare_pair(p, "tiny", train=t, layout=layout, reps=1)
        for p in PAIRS[:3]
        for t in (True, False)
        for layout in p.layouts
    ]
    assert all(max(r["out diff"], r["grad diff"], r["buffer diff"]) < 1e-4 for r in rows)
    assert all(r["ops"] <= r["torch ops"] + 2 for r in rows)


def test_compare_grid_covers_the_training_family_against_plain_norms():
    from normkit.compare import PAIRS, compare_pair

    family = [p for p in PAIRS if not p.twin]
    assert {"BatchRenorm2d", "GhostBatchNorm2d", "FrozenBatchNorm2d", "BatchNormalization"} <= {
        p.name for p in family
    }
    for p in family:
        row = compare_pair(p, "tiny", reps=1)
        assert row["vs"] == "plain norm" and "out diff" not in row and row["ratio"] > 0


def test_lab_with_an_unknown_experiment_id_exits_2_with_the_known_ids(capsys):
    assert cli.main(["lab", "--only", "gradient_flow", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment id(s) ['gradient_flow']" in err and "gradient-flow" in err


def test_version_is_the_installed_metadata(capsys):
    import importlib.metadata

    import normkit

    assert normkit.__version__ == importlib.metadata.version("normkit")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"normkit {normkit.__version__}\n"


def test_python_dash_m_normkit_is_the_command(tmp_path):
    import subprocess
    import sys

    import normkit

    proc = subprocess.run(
        [sys.executable, "-m", "normkit", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"normkit {normkit.__version__}\n"


def test_tune_writes_a_table_auto_then_follows(tmp_path, monkeypatch, capsys):
    from normkit.backends import registry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = ["tune", "--sizes", "13", "--ops", "layer_norm", "--reps", "1"]
    try:
        assert cli.main(args) == 0
        path = tmp_path / "normkit" / "auto_table.json"
        assert registry.auto_table_path() == path
        rows = registry.auto_table()
        assert {(r["op"], r["dir"], r["numel"]) for r in rows} == {
            ("layer_norm", "fwd", 1 << 13),
            ("layer_norm", "fwd+bwd", 1 << 13),
        }
        assert all(r["backend"] in registry.available() for r in rows)
        assert cli.main(["tune", "--show"]) == 0
        assert str(path) in capsys.readouterr().out
        path.write_text("not json")
        with pytest.warns(RuntimeWarning, match="ignoring the auto table"):
            registry.set_auto_table(None)
    finally:
        monkeypatch.delenv("XDG_CACHE_HOME")
        registry.set_auto_table(None)
