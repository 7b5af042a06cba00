"""Smoke test of an installed normkit wheel, run from outside the source tree (``make dist-check``).

    python scripts/smoke_installed.py core   # in a venv with the wheel and no extras
    python scripts/smoke_installed.py data   # after ``pip install 'normkit[data]'``

``core`` checks that the package imports from site-packages (so a file missing from the wheel
fails here), that a layer of each family matches its torch.nn twin with the same state dict,
that BatchNorm folding keeps the outputs, the version and the missing-extra messages of the
``normkit`` command. ``data`` checks a scaler against scikit-learn and its bad-input error.
Oracles: torch.nn modules, the unfolded model, scikit-learn, importlib.metadata.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import normkit
import normkit.nn as nkn
from normkit.inference import fold_batchnorm


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
        raise AssertionError(f"{what}: max |diff| {(a - b).abs().max().item():.3g}")


def _output(y: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


def _twin(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, what: str) -> None:
    """``ours`` loads ``theirs``' state dict and gives the same outputs, train then eval."""
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        _close(_output(ours(x)), _output(theirs(x)), f"{what} (train={mode})")


def core() -> None:
    site = Path(normkit.__file__).resolve()
    if "site-packages" not in site.parts:
        raise AssertionError(f"normkit imported from {site}, not from the installed wheel")

    g = torch.Generator().manual_seed(0)
    img = torch.randn(4, 6, 5, 5, generator=g)
    seq = torch.randn(3, 7, 8, generator=g)
    _twin(nkn.BatchNorm2d(6), nn.BatchNorm2d(6), img, "BatchNorm2d")
    _twin(nkn.GroupNorm(3, 6), nn.GroupNorm(3, 6), img, "GroupNorm")
    _twin(
        nkn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        img,
        "InstanceNorm2d",
    )
    _twin(nkn.LayerNorm(8), nn.LayerNorm(8), seq, "LayerNorm")
    _twin(nkn.RMSNorm(8, eps=1e-6), nn.RMSNorm(8, eps=1e-6), seq, "RMSNorm")
    _twin(nkn.LayerNormLSTM(8, 5, ln=False), nn.LSTM(8, 5), seq, "LSTM")

    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = nkn.freeze_batchnorm(nn.Sequential(copy.deepcopy(bn))).train()
    _close(frozen(img), bn.eval()(img), "FrozenBatchNorm2d (train mode = torch eval)")

    model = nn.Sequential(nn.Conv2d(6, 4, 3), nkn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)  # non-trivial statistics to fold
        model[1].running_var.uniform_(0.5, 2)
        folded, report = fold_batchnorm(model, return_report=True)
        if not any(isinstance(m, nn.Conv2d) for m in folded.modules()) or any(
            isinstance(m, nkn.BatchNorm2d) for m in folded.modules()
        ):
            raise AssertionError(f"fold_batchnorm left the BatchNorm in place: {report}")
        _close(folded(img), model(img), "fold_batchnorm")

    try:
        importlib.import_module("normkit.data")
    except ImportError as err:
        if "pip install 'normkit[data]'" not in str(err):
            raise AssertionError(f"normkit.data without scikit-learn said: {err}") from err
    else:
        raise AssertionError("normkit.data imported without scikit-learn installed")

    version = importlib.metadata.version("normkit")
    if normkit.__version__ != version:
        raise AssertionError(f"normkit.__version__ {normkit.__version__} != metadata {version}")
    exe = Path(sys.executable).parent / "normkit"
    for cmd in ([str(exe), "--version"], [sys.executable, "-m", "normkit", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        if out != f"normkit {version}":
            raise AssertionError(f"{cmd} printed {out!r}")
    lab = subprocess.run([str(exe), "lab", "--quick"], capture_output=True, text=True)
    want = "normkit: normkit lab needs scikit-learn, which is not installed; "
    want += "install it with: pip install 'normkit[lab]'"
    if lab.returncode != 2 or lab.stderr.strip() != want:
        raise AssertionError(f"normkit lab without extras: rc {lab.returncode}, {lab.stderr!r}")


def data() -> None:
    import numpy as np
    from sklearn.exceptions import NotFittedError
    from sklearn.preprocessing import StandardScaler as SkStandardScaler

    from normkit.data import StandardScaler

    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    ours, theirs = StandardScaler().fit(x), SkStandardScaler().fit(x)
    np.testing.assert_allclose(ours.transform(x), theirs.transform(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12)
    try:
        StandardScaler().transform(x)
    except NotFittedError as err:
        if "fit" not in str(err):
            raise AssertionError(f"unfitted StandardScaler said: {err}") from err
    else:
        raise AssertionError("an unfitted StandardScaler transformed without an error")
    try:
        ours.transform(x[:, :3])
    except ValueError as err:
        if "4" not in str(err) or "3" not in str(err):
            raise AssertionError(f"a wrong feature count said: {err}") from err
    else:
        raise AssertionError("StandardScaler accepted 3 features after fitting 4")


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "core"
    {"core": core, "data": data}[stage]()
    print(f"smoke {stage}: ok (normkit {normkit.__version__} from {Path(normkit.__file__).parent})")
