"""Export: every spec-table layer (eval mode) exports with torch.export and the ONNX dynamo
exporter to standard operators only (no normkit custom op, whatever backend the layer was built
with and whatever the input size), and onnxruntime gives eager's numbers; folded CNNs export
without BatchNormalization nodes; the LN-LSTM exports unrolled."""

from __future__ import annotations

import copy
import importlib.util
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import normkit.nn as nkn
from normkit import backends
from normkit.inference import export_onnx
from tests.specs import SPECS, NormSpec, randomize_params

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript, onnxruntime not installed")


@pytest.fixture(autouse=True)
def _quiet_exporter():
    logging.disable(logging.WARNING)  # the exporter logs every missing torchvision op
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _model(spec: NormSpec, backend: str) -> nn.Module:
    torch.manual_seed(0)
    try:
        m = spec.make(backend=backend)
    except ValueError:  # a layer that takes no such backend
        m = spec.make()
    randomize_params(m)
    for mod in m.modules():
        rm = getattr(mod, "running_mean", None)
        if isinstance(rm, Tensor) and not isinstance(rm, nn.parameter.UninitializedBuffer):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def _ready(spec: NormSpec, large: bool) -> tuple[nn.Module, Tensor]:
    """The layer in eval mode and an input; built with the numba backend where numba runs the
    op (the custom ops the export must avoid), else auto."""
    x = spec.input(torch.float32)
    if x.numel() == 0:
        pytest.skip("an empty-input row: the layer exports through its non-empty rows")
    numba = "numba" in backends.available() and spec.op is not None
    numba = numba and backends.get("numba").check(spec.op, x) is None
    m = _model(spec, "numba" if numba else "auto")
    m(x)  # materialize lazy layers
    if large and x.ndim < 2:
        pytest.skip("a single vector (no batch to grow): the small row covers it")
    if large:  # big enough that auto runs the fused kernels in eager: repeat along the first
        # dim the layer accepts more of (the batch; a position dim for conditioned layers)
        reps = max(1, (1 << 18) // x.numel())
        for dim in (0, x.ndim - 1, x.ndim - 2):
            big = x.repeat_interleave(reps, dim=dim)
            try:
                m(big)
            except ValueError:
                continue
            x = big
            break
        else:
            raise AssertionError(f"{spec.id}: found no dim to grow the input along")
    return m.eval(), x


def _custom_ops(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if "normkit" in str(n.target)]


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_torch_export_uses_standard_ops_and_keeps_the_numbers(spec: NormSpec, large: bool):
    m, x = _ready(spec, large)
    with torch.no_grad():
        want = m(x)
    ep = torch.export.export(m, (x,))
    assert _custom_ops(ep.graph_module) == []
    with torch.no_grad():
        got = ep.module()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()))


FAST_ONNX = ("bn2d", "ln", "rms", "gn", "in1d", "dyt", "adaln-zero", "frn-tlu")


def _onnx_params():
    for spec in SPECS:
        for large in (False, True):
            fast = spec.id in FAST_ONNX and not large
            marks = [needs_onnx] + ([] if fast else [pytest.mark.slow])
            yield pytest.param(
                spec, large, id=f"{spec.id}-{'large' if large else 'small'}", marks=marks
            )


@pytest.mark.parametrize("spec, large", list(_onnx_params()))
def test_onnx_export_matches_onnxruntime(spec: NormSpec, large: bool, tmp_path: Path):
    m, x = _ready(spec, large)
    report = export_onnx(m, x, tmp_path / "m.onnx", fold=False)
    assert report.max_abs_error is not None and report.max_abs_error <= report.tolerance
    assert not any("normkit" in op for op in report.operators)


def test_spec_ids_of_the_fast_subset_exist():
    assert set(FAST_ONNX) <= {s.id for s in SPECS}


def _cnn(bn: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    block = lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bn(c), nn.ReLU())  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        bn(8),
        nn.ReLU(),
        block(8),
        block(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@needs_onnx
def test_folded_cnn_has_no_batchnorm_nodes_and_no_more_nodes_than_torch_nn(tmp_path: Path):
    ours, theirs = _cnn(nkn.BatchNorm2d).eval(), _cnn(nn.BatchNorm2d).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 16, 16)
    a = export_onnx(ours, x, tmp_path / "a.onnx")
    b = export_onnx(theirs, x, tmp_path / "b.onnx")
    assert a.operators.get("BatchNormalization", 0) == 0
    assert len(a.fold.folded) == 3
    assert a.nodes <= b.nodes
    unfolded = export_onnx(ours, x, tmp_path / "c.onnx", fold=False)
    plain = export_onnx(theirs, x, tmp_path / "d.onnx", fold=False)
    assert unfolded.nodes <= plain.nodes


@needs_onnx
@pytest.mark.parametrize("cls", [nkn.LayerNormLSTM, nkn.LayerNormGRU])
def test_layer_norm_rnns_export_unrolled(cls, tmp_path: Path):
    torch.manual_seed(0)
    rnn = cls(6, 8, num_layers=2).eval()
    x = torch.randn(5, 3, 6)
    ep = torch.export.export(rnn, (x,))
    assert _custom_ops(ep.graph_module) == []
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x)[0], rnn(x)[0])

    class Out(nn.Module):  # the output sequence only
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Tensor) -> Tensor:
            return self.rnn(x)[0]

    report = export_onnx(Out(), x, tmp_path / "rnn.onnx")
    assert report.max_abs_error is not None


@needs_onnx
def test_half_precision_policy_is_exported(tmp_path: Path):
    m = nkn.LayerNorm(64).eval().to(torch.float16)
    x = torch.randn(8, 64, dtype=torch.float16) * 30
    report = export_onnx(m, x, tmp_path / "h.onnx")
    assert report.max_abs_error <= report.tolerance


def test_missing_onnx_says_which_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # hidden, as if not installed
    with pytest.raises(ImportError, match=r"pip install 'normkit\[export\]'"):
        export_onnx(nn.Identity(), torch.randn(2), tmp_path / "x.onnx")


def test_export_does_not_change_the_model(tmp_path: Path):
    if not HAVE_ONNX:
        pytest.skip("onnx not installed")
    m = _cnn(nkn.BatchNorm2d).eval()
    before = copy.deepcopy(m.state_dict())
    export_onnx(m, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@needs_onnx
def test_cli_fold_writes_and_checks_an_onnx_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from normkit.cli import main as cli_main

    model = _cnn(nn.BatchNorm2d)
    sd = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), sd)
    args = ["fold", str(sd), str(tmp_path / "f.pt"), "--factory", "tests.test_export:_plain_cnn"]
    with pytest.raises(SystemExit, match="--input-shape"):
        cli_main([*args, "--onnx", str(tmp_path / "m.onnx")])
    assert cli_main([*args, "--input-shape", "1,3,8,8", "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs eager" in out and (tmp_path / "m.onnx").exists()


def _plain_cnn() -> nn.Module:
    return _cnn(nn.BatchNorm2d)
