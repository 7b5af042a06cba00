"""optimize(model, example_inputs): the result computes what the original computes (the
untouched original in float64 is the oracle), the report is consistent, wrong results raise.
No timing assertions: which candidate wins is the machine's business."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import normkit.nn as nkn
from normkit import backends
from normkit.examples.models import bn_mlp, randomize_norm_stats, resnet_cnn
from normkit.inference import OptimizationError, optimize
from normkit.inference.fold import _FOLDABLE, batchnorm_protocol


def _fast(model: nn.Module, x, **kw):
    return optimize(model, x, reps=1, warmup=0, return_report=True, **kw)


def test_cnn_float64_exact_and_report():
    model = resnet_cnn(widths=(4, 8), blocks=1).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    before = copy.deepcopy(model.state_dict())
    fast, report = _fast(model, x)
    with torch.no_grad():
        err = (fast(x) - model(x)).abs().max().item()
    assert err <= 1e-10 and report.max_abs_error <= 1e-10
    assert len(report.fold.folded) == 6 and not report.fold.skipped
    assert set(report.candidates) == {"contiguous/as-is", "channels_last/as-is"}
    assert report.speedup == pytest.approx(report.baseline_ms / report.optimized_ms)
    assert (
        report.optimized_ms
        == report.candidates[f"{'channels_last' if report.channels_last else 'contiguous'}/as-is"]
    )
    # the original keeps its BN layers and values
    assert isinstance(model[1], nn.BatchNorm2d)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert "optimize:" in str(report)


def test_mlp_no_channels_last_candidate():
    model = bn_mlp((16, 32, 8)).double()
    x = torch.randn(8, 16, dtype=torch.float64)
    fast, report = _fast(model, x)
    assert list(report.candidates) == ["contiguous/as-is"] and not report.channels_last
    torch.testing.assert_close(fast(x), model(x), rtol=1e-10, atol=1e-10)


class Tower(nn.Module):
    """Remaining (unfoldable) norms, two inputs, a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.rms = nkn.RMSNorm(16)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.ln(torch.relu(self.fc(a)))
        return h, {"r": self.rms(h + b)}


def test_remaining_norms_try_every_backend():
    model = randomize_norm_stats(Tower()).eval()
    a, b = torch.randn(4, 8), torch.randn(4, 16)
    fast, report = _fast(model, (a, b))
    expected = {"contiguous/as-is"} | {
        f"contiguous/{n}" for n in backends.available() if n != "reference"
    }
    assert set(report.candidates) | set(report.rejected) == expected
    (h, d), (h0, d0) = fast(a, b), model(a, b)
    torch.testing.assert_close(h, h0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d["r"], d0["r"], rtol=1e-5, atol=1e-5)
    if report.norm_backend is not None:
        assert isinstance(fast.ln, nkn.LayerNorm) and fast.ln.backend == report.norm_backend


class LiesAboutStats(nn.BatchNorm2d):
    """Claims the BN protocol but its forward doubles the output: folding must be caught."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def test_wrong_result_raises(monkeypatch):
    monkeypatch.setitem(_FOLDABLE, LiesAboutStats, batchnorm_protocol)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), LiesAboutStats(4)).eval()
    with pytest.raises(OptimizationError, match="differs from the original"):
        optimize(model, torch.randn(2, 3, 8, 8), reps=1, warmup=0)


def test_tolerance_override_and_bad_input():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    with pytest.raises(ValueError, match="eval mode"):
        optimize(model.train(), torch.randn(3, 4))
    model.eval()
    with pytest.raises(ValueError, match="reps >= 1"):
        optimize(model, torch.randn(3, 4), reps=0)
    _, report = _fast(model, torch.randn(3, 4), tolerance=(0.0, 1.0))
    assert report.tolerance == 1.0
