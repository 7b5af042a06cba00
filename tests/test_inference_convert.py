"""convert(model, to=...): round trips keep state_dicts bit for bit; converted models compute
what the torch.nn originals compute (torch.nn is the oracle) in train and eval."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import normkit.nn as nkn
from normkit.inference import TWINS, convert

TORCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


class Zoo(nn.Module):
    """One of every torch.nn norm with a normkit twin, in several configurations."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(6, momentum=None)
        self.bn2 = nn.BatchNorm2d(6, eps=1e-3)
        self.bn2_na = nn.BatchNorm2d(6, affine=False)
        self.bn3 = nn.BatchNorm3d(6)
        self.ln = nn.LayerNorm((5, 6), eps=1e-6)
        self.ln_nb = nn.LayerNorm(6, bias=False)
        self.rms = nn.RMSNorm(6)
        self.gn = nn.GroupNorm(3, 6)
        self.in1 = nn.InstanceNorm1d(6, affine=True, track_running_stats=True)
        self.in2 = nn.InstanceNorm2d(6)
        self.in3 = nn.InstanceNorm3d(6, affine=True)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, 6, 5, 6)
        y = self.bn2(x) + self.bn2_na(x) + self.gn(x) + self.in2(x)
        y = y + self.ln(x) + self.ln_nb(x) + self.rms(x)
        y = y + self.bn3(x.unsqueeze(2)).squeeze(2) + self.in3(x.unsqueeze(2)).squeeze(2)
        z = x.flatten(2)
        y = y + (self.bn1(z) + self.in1(z)).view_as(x)
        return y


def _randomized(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + (0.5 if "var" in name else -0.5))
            else:
                t.fill_(3)
    return model


def test_twin_table_covers_every_torch_norm():
    # the lazy layers convert while uninitialized (tests/test_nn_catalog.py); CrossMapLRN2d has
    # no exact twin (torch's deviates from the formula, see tests/test_nn_lazy_lrn.py)
    extra = {
        nn.SyncBatchNorm,
        nn.LocalResponseNorm,
        nn.LazyBatchNorm1d,
        nn.LazyBatchNorm2d,
        nn.LazyBatchNorm3d,
        nn.LazyInstanceNorm1d,
        nn.LazyInstanceNorm2d,
        nn.LazyInstanceNorm3d,
    }
    assert {t.torch_cls for t in TWINS} == set(TORCH_NORMS) | extra


def test_sync_batchnorm_round_trip():
    if not hasattr(nkn, "SyncBatchNorm"):
        pytest.skip("this normkit has no SyncBatchNorm")
    model = _randomized(nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))).eval()
    nk = convert(model, "normkit")
    assert type(nk[1]) is nkn.SyncBatchNorm and nk[1].process_group is None
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(
        nk(x),
        nn.functional.batch_norm(
            model[0](x), model[1].running_mean, model[1].running_var, model[1].weight, model[1].bias
        ),
    )
    back = convert(nk, "torch")
    assert type(back[1]) is nn.SyncBatchNorm
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_identical_state_dict(dtype):
    model = _randomized(Zoo()).to(dtype)
    model.gn.train(False)
    model.rms.weight.requires_grad_(False)
    nk, report = convert(model, "normkit", return_report=True)
    assert len(report.converted) == 11 and not report.skipped
    assert not any(type(m) in TORCH_NORMS for m in nk.modules())
    back = convert(nk, "torch")
    sd0, sd1 = model.state_dict(), back.state_dict()
    assert list(sd0) == list(sd1)
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and sd0[k].device == sd1[k].device, k
        assert torch.equal(sd0[k], sd1[k]), k
    for (n0, m0), (n1, m1) in zip(model.named_modules(), back.named_modules(), strict=True):
        assert n0 == n1 and type(m0) is type(m1) and m0.training == m1.training
    assert not back.rms.weight.requires_grad and back.gn.weight.requires_grad
    assert not nk.gn.training and nk.bn2.training


@pytest.mark.parametrize("train", [True, False])
def test_converted_model_matches_torch(train):
    model = _randomized(Zoo()).double().train(train)
    nk = convert(model, "normkit")
    x = torch.randn(4, 6, 5, 6, dtype=torch.float64)
    for _ in range(2):
        ref, out = model(x), nk(x)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    sd = model.state_dict()
    for k, v in nk.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=1e-10, atol=1e-10)


def test_normkit_to_torch_and_back():
    model = nn.Sequential(
        nkn.BatchNorm2d(4), nkn.GroupNorm(2, 4), nkn.InstanceNorm2d(4, affine=True)
    )
    _randomized(model)
    tm, report = convert(model, "torch", return_report=True)
    assert [type(m) for m in tm] == [nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d]
    assert [c.target for c in report.converted] == [
        "torch.nn.BatchNorm2d",
        "torch.nn.GroupNorm",
        "torch.nn.InstanceNorm2d",
    ]
    again = convert(tm, "normkit", backend="reference")
    assert all(m.backend == "reference" for m in again)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_layers_without_twin_are_kept_with_reason():
    model = nn.Sequential(nkn.BatchNorm(4, axis=-1), nkn.LayerNorm2d(4), nkn.BatchNorm1d(4))
    tm, report = convert(model, "torch", return_report=True)
    assert type(tm[0]) is nkn.BatchNorm and type(tm[1]) is nkn.LayerNorm2d
    assert type(tm[2]) is nn.BatchNorm1d
    assert "no exact twin" in report.skipped["0"] and "no exact twin" in report.skipped["1"]
    model[0] = nkn.BatchNorm1d(4, axis=-1)
    _, report = convert(model, "torch", return_report=True)
    assert "axis -1" in report.skipped["0"]


def test_shared_module_stays_shared_and_root_converts():
    ln = nn.LayerNorm(4)
    model = nn.Sequential(ln, nn.Linear(4, 4), ln)
    nk = convert(model, "normkit")
    assert nk[0] is nk[2] and isinstance(nk[0], nkn.LayerNorm)
    root = convert(nn.BatchNorm1d(3).eval(), "normkit")
    assert type(root) is nkn.BatchNorm1d and not root.training


def test_inplace_and_subclasses_untouched():
    class Custom(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.BatchNorm2d(3), Custom(3))
    out = convert(model, "normkit", inplace=True)
    assert out is model and isinstance(model[0], nkn.BatchNorm2d) and type(model[1]) is Custom


def test_bad_arguments():
    with pytest.raises(ValueError, match="'normkit' or 'torch'"):
        convert(nn.LayerNorm(3), "keras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend= applies"):
        convert(nn.LayerNorm(3), "torch", backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_preserved_cuda():
    model = _randomized(Zoo()).cuda()
    nk = convert(model, "normkit")
    assert all(t.is_cuda for t in nk.state_dict().values())
    x = torch.randn(2, 6, 5, 6, device="cuda")
    model.eval()
    nk.eval()
    torch.testing.assert_close(nk(x), model(x), rtol=1e-4, atol=1e-4)
    back = convert(nk, "torch")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
