"""Optional dependencies: each entry point, with the module hidden, names the extra to install
(the CLI: one line on stderr, exit status 2, no traceback); features with a torch fallback run it.

Each hidden module gets one subprocess (``tests/hidden_extras.py``), since hiding a module that
this process already imported would not hide it. Oracles: the exact message the helper promises,
the same computations in this process (numba and scikit-learn present), scikit-learn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from normkit._optional import MissingDependencyError, installed, require

PROBE = Path(__file__).with_name("hidden_extras.py")


def _line(feature: str, package: str, extra: str) -> str:
    return (
        f"{feature} needs {package}, which is not installed; "
        f"install it with: pip install 'normkit[{extra}]'"
    )


def _hide(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    cwd = tmp_path_factory.mktemp(f"without-{name}")
    out = cwd / "results.json"
    proc = subprocess.run(
        [sys.executable, str(PROBE), name, str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), cwd


@pytest.fixture(scope="module")
def without_sklearn(tmp_path_factory):
    return _hide("sklearn", tmp_path_factory)[0]


@pytest.fixture(scope="module")
def without_matplotlib(tmp_path_factory):
    return _hide("matplotlib", tmp_path_factory)[0]


@pytest.fixture(scope="module")
def without_numba(tmp_path_factory):
    return _hide("numba", tmp_path_factory)


@pytest.mark.parametrize(
    ("probe", "feature", "extra"),
    [
        ("normkit lab --quick --out lab-out", "normkit lab", "lab"),
        ("normkit bench --data --quick", "normkit bench --data", "data"),
        ("normkit doctor --steps 1 --out doctor-out", "normkit doctor --data digits", "doctor"),
        ("normkit doctor --overhead --quick", "normkit doctor --overhead", "doctor"),
    ],
)
def test_cli_without_scikit_learn_says_which_extra(without_sklearn, probe, feature, extra):
    rc, _, err = without_sklearn[probe]
    assert rc == 2
    assert err == f"normkit: {_line(feature, 'scikit-learn', extra)}\n"


@pytest.mark.parametrize(
    ("probe", "feature", "extra"),
    [
        ("normkit lab --quick --out lab-out", "normkit lab", "lab"),
        ("normkit doctor --steps 1 --out doctor-out", "normkit doctor", "doctor"),
    ],
)
def test_cli_without_matplotlib_says_which_extra(without_matplotlib, probe, feature, extra):
    rc, _, err = without_matplotlib[probe]
    assert rc == 2
    assert err == f"normkit: {_line(feature, 'matplotlib', extra)}\n"


def test_library_without_scikit_learn_says_which_extra(without_sklearn):
    assert without_sklearn["import normkit.data"] == [
        2,
        "MissingDependencyError",
        _line("normkit.data", "scikit-learn", "data"),
    ]
    assert without_sklearn["digits()"] == [
        2,
        "MissingDependencyError",
        _line("the digits example data", "scikit-learn", "data"),
    ]


def test_recorder_plot_without_matplotlib_says_which_extra(without_matplotlib):
    feature = "the diagnostics figures (Recorder.plot, to_html)"
    assert without_matplotlib["Recorder.plot"] == [
        2,
        "MissingDependencyError",
        _line(feature, "matplotlib", "plot"),
    ]


def test_numba_backend_by_name_without_numba_says_which_extra(without_numba):
    results, _ = without_numba
    assert results["backend='numba'"] == [
        2,
        "MissingDependencyError",
        _line("backend='numba'", "numba", "fast"),
    ]


def test_rmsnorm_to_hf_without_transformers_says_which_extra(tmp_path_factory):
    results, _ = _hide("transformers", tmp_path_factory)
    assert results["RMSNorm.to_hf"] == [
        2,
        "MissingDependencyError",
        _line("RMSNorm.to_hf", "transformers", "hf"),
    ]


@pytest.mark.skipif(not installed("numba"), reason="compares against the numba paths")
def test_without_numba_every_numba_path_falls_back_to_torch(without_numba):
    from sklearn.preprocessing import StandardScaler

    import normkit.nn as nkn

    results, cwd = without_numba
    assert results["fallbacks"] == ["ok", "", ""]
    saved = torch.load(cwd / "without_numba.pt", weights_only=False)
    big, y = saved["layer_norm"]
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(big, (160,)))
    seq, state, out = saved["lstm"]
    lstm = nkn.LayerNormLSTM(8, 6)
    lstm.load_state_dict(state)
    torch.testing.assert_close(out, lstm(seq)[0].detach(), rtol=1e-5, atol=1e-5)
    rows = np.random.default_rng(0).normal(size=(70_000, 4))
    np.testing.assert_allclose(saved["scaler_mean"].numpy(), StandardScaler().fit(rows).mean_)
    assert saved["recorded_steps"] == 1


def test_require_returns_the_module_and_names_the_distribution(monkeypatch):
    assert require("numpy", extra="core", feature="x") is np
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'normkit\[data\]'"):
        require("sklearn", extra="data", feature="normkit.data")
    assert not installed("sklearn")
    assert installed("numpy")


def test_require_keeps_the_error_of_an_installed_but_broken_package(tmp_path, monkeypatch):
    """An ImportError from inside an installed package is not reported as 'not installed'."""
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as exc:
        require("brokenpkg", extra="x", feature="y")
    assert not isinstance(exc.value, MissingDependencyError)
    assert exc.value.name == "no_such_module_xyz"
