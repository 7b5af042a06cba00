"""Importing normkit changes nothing in the process: no environment variable, no torch setting,
no thread count, no numba configuration; numba and the plotting/lab stack load only on use.
Oracle: a snapshot of the process state taken in a fresh interpreter before the import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_SNAPSHOT = """
import importlib.util, json, os, sys
import torch

def snapshot():
    state = {
        "environ": dict(os.environ),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if "numba" in sys.modules:
        import numba
        state["numba_config"] = {k: repr(v) for k, v in vars(numba.config).items() if k.isupper()}
        state["numba_threads"] = numba.get_num_threads()
    return state

if sys.argv[1] == "preload-numba":
    import numba
before = snapshot()
import normkit, normkit.nn, normkit.functional
after = snapshot()
lazy = ("numba", "matplotlib", "sklearn", "normkit.lab", "normkit.bench")
print(json.dumps({"before": before, "after": after, "loaded": [m for m in lazy if m in sys.modules]}))
"""


def _import_normkit(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, mode], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_import_changes_no_process_state():
    result = _import_normkit("plain")
    assert result["after"] == result["before"]
    assert result["loaded"] == []  # numba, matplotlib, scikit-learn, lab, bench: on first use only


def test_import_leaves_numba_config_alone():
    pytest.importorskip("numba")
    result = _import_normkit("preload-numba")
    assert "numba_config" in result["before"]
    assert result["after"] == result["before"]
