"""Run normkit's entry points with optional modules hidden; used by ``test_optional.py``.

    python tests/hidden_extras.py sklearn,matplotlib OUT.json

Sets ``sys.modules[name] = None`` for each name (the standard way to make ``import name`` fail)
before normkit is imported, then runs every probe and writes ``{probe: [exit code or "ok",
the error's type, the message]}`` to OUT.json. A probe's result is what a user would see.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

HIDDEN = sys.argv[1].split(",")
for _name in HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]

import torch  # noqa: E402

from normkit.cli import main  # noqa: E402

CLI: dict[str, list[str]] = {
    "sklearn": [
        ["lab", "--quick", "--out", "lab-out"],
        ["bench", "--data", "--quick"],
        ["doctor", "--steps", "1", "--out", "doctor-out"],
        ["doctor", "--overhead", "--quick"],
    ],
    "matplotlib": [
        ["lab", "--quick", "--out", "lab-out"],
        ["doctor", "--steps", "1", "--out", "doctor-out"],
    ],
    "numba": [],
    "transformers": [],
}


def _cli(argv: list[str]) -> list[object]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return [rc, "", err.getvalue()]


def _data_import() -> None:
    import normkit.data  # noqa: F401


def _digits() -> None:
    from normkit.examples.data import digits_images

    digits_images()


def _plot() -> None:
    from normkit.diagnostics import watch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with watch(model) as rec:
        model(torch.randn(8, 4)).sum().backward()
    rec.plot("plot.png")


def _numba_backend() -> None:
    import normkit.nn as nkn

    nkn.LayerNorm(8, backend="numba")(torch.randn(2, 8))


def _without_numba() -> None:
    """The numba paths fall back to torch: outputs saved for the parent to compare."""
    import numpy as np

    import normkit.nn as nkn
    from normkit import backends
    from normkit.data import StandardScaler
    from normkit.diagnostics import watch

    assert "numba" not in backends.names(), backends.names()
    g = torch.Generator().manual_seed(0)
    big = torch.randn(64, 128, 160, generator=g)  # above the numba backend's MIN_NUMEL
    seq = torch.randn(5, 3, 8, generator=g)
    torch.manual_seed(0)
    ln, lstm = nkn.LayerNorm(160), nkn.LayerNormLSTM(8, 6)
    rows = np.random.default_rng(0).normal(size=(70_000, 4))  # above NUMBA_MIN_NUMEL
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), nkn.BatchNorm1d(6))
    with watch(model) as rec:
        model(seq[0]).square().sum().backward()
    torch.save(
        {
            "layer_norm": (big, ln(big).detach()),
            "lstm": (seq, lstm.state_dict(), lstm(seq)[0].detach()),
            "scaler_mean": torch.from_numpy(StandardScaler().fit(rows).mean_),
            "recorded_steps": len(rec.steps),
        },
        "without_numba.pt",
    )


def _to_hf() -> None:
    import normkit.nn as nkn

    nkn.RMSNorm(8, casting="llama").to_hf()


LIBRARY: dict[str, dict[str, Callable[[], None]]] = {
    "sklearn": {"import normkit.data": _data_import, "digits()": _digits},
    "matplotlib": {"Recorder.plot": _plot},
    "numba": {"backend='numba'": _numba_backend, "fallbacks": _without_numba},
    "transformers": {"RMSNorm.to_hf": _to_hf},
}


def _library(probe: Callable[[], None]) -> list[object]:
    try:
        probe()
    except ImportError as err:
        return [2, type(err).__name__, str(err)]
    return ["ok", "", ""]


if __name__ == "__main__":
    results: dict[str, list[object]] = {}
    for name in HIDDEN:
        for argv in CLI[name]:
            results["normkit " + " ".join(argv)] = _cli(argv)
        for label, probe in LIBRARY[name].items():
            results[label] = _library(probe)
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))
