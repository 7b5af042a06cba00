"""normkit.diagnostics.check_model: every pitfall is reported on a crafted model and not on its
corrected twin; the model's modes and buffers are left as they were."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normkit.nn as nkn
from normkit.diagnostics import Finding, check_model, is_bn_like


def codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def by_code(findings: list[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, findings
    return hits[0]


BNS = [nn.BatchNorm2d, nkn.BatchNorm2d]


def conv_bn(bias: bool, bn: type[nn.Module] = nn.BatchNorm2d, **kw: object) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=bias), bn(8, **kw), nn.ReLU())


@pytest.mark.parametrize("bn", BNS)
def test_bias_before_norm(bn: type[nn.Module]) -> None:
    for example in (None, torch.randn(4, 1, 6, 6)):
        f = by_code(check_model(conv_bn(True, bn), example), "bias-before-norm")
        assert f.layer == "0" and f.severity == "info"
        assert "bias-before-norm" not in codes(check_model(conv_bn(False, bn), example))


def test_bias_before_norm_follows_the_data_flow_when_traced() -> None:
    class ConvReluBN(nn.Module):  # the ReLU is functional: the conv is not *right* before BN
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(F.relu(self.conv(x)))

    m = ConvReluBN()
    assert "bias-before-norm" in codes(check_model(m))  # registration order can't tell
    assert "bias-before-norm" not in codes(check_model(m, torch.randn(2, 1, 5, 5)))


@pytest.mark.parametrize("bn", BNS)
def test_momentum_in_the_keras_convention(bn: type[nn.Module]) -> None:
    f = by_code(check_model(conv_bn(False, bn, momentum=0.99)), "bn-momentum-convention")
    assert f.layer == "1" and f.value == 0.99 and "momentum=0.01" in f.fix
    assert check_model(conv_bn(False, bn, momentum=0.01)) == []
    assert check_model(conv_bn(False, bn, momentum=None)) == []


def test_bn_like_layers_are_found_by_duck_typing() -> None:
    class MyBN(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.momentum = 0.9
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))
            self.register_buffer("num_batches_tracked", torch.tensor(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    assert is_bn_like(MyBN(4)) and not is_bn_like(nn.LayerNorm(4))
    m = nn.Sequential(nn.Linear(4, 4, bias=False), MyBN(4))
    assert codes(check_model(m)) == {"bn-momentum-convention"}
    m = nn.Sequential(nn.Linear(4, 4), MyBN(4))
    assert codes(check_model(m)) == {"bn-momentum-convention", "bias-before-norm"}


@pytest.mark.parametrize("bn", BNS)
def test_bn_never_updated_in_eval(bn: type[nn.Module]) -> None:
    m = conv_bn(False, bn).eval()
    f = by_code(check_model(m), "bn-never-updated")
    assert f.severity == "error" and f.layer == "1"
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 1, 6, 6))
    m.eval()
    assert "bn-never-updated" not in codes(check_model(m))


@pytest.mark.parametrize("bn", BNS)
def test_nonfinite_running_stats(bn: type[nn.Module]) -> None:
    m = conv_bn(False, bn)
    with torch.no_grad():
        m[1].running_var[3] = float("nan")
    assert by_code(check_model(m), "bn-nonfinite-stats").severity == "error"
    assert check_model(conv_bn(False, bn)) == []


@pytest.mark.parametrize("bn", BNS)
def test_batch_size_one_in_train_mode(bn: type[nn.Module]) -> None:
    m = conv_bn(False, bn)
    f = by_code(check_model(m, torch.randn(1, 1, 6, 6)), "bn-batch-size-1")
    assert f.severity == "warning"
    bn1 = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    assert by_code(check_model(bn1, torch.randn(1, 4)), "bn-batch-size-1").severity == "error"
    assert check_model(m, torch.randn(8, 1, 6, 6)) == []
    # eval mode with batch size 1 is how inference runs: fine once the stats are estimated
    m = conv_bn(False, bn, momentum=None)  # cumulative average: exact after one batch
    with torch.no_grad():
        m(torch.randn(64, 1, 6, 6))
    assert check_model(m.eval(), torch.randn(1, 1, 6, 6)) == []


@pytest.mark.parametrize("bn", [nn.BatchNorm1d, nkn.BatchNorm1d])
def test_eval_train_mismatch(bn: type[nn.Module]) -> None:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, bias=False), bn(8))
    with torch.no_grad():
        for _ in range(30):
            m(torch.randn(64, 1, 4, 4, generator=g))
    m.eval()
    same = torch.randn(64, 1, 4, 4, generator=g)
    shifted = torch.randn(64, 1, 4, 4, generator=g) * 3 + 5
    f = by_code(check_model(m, shifted), "bn-eval-mismatch")
    assert f.layer == "2"
    assert "bn-eval-mismatch" not in codes(check_model(m, same))


@pytest.mark.parametrize("bn", BNS)
def test_frozen_bn_that_still_updates(bn: type[nn.Module]) -> None:
    m = conv_bn(False, bn)
    m[1].requires_grad_(False)
    assert by_code(check_model(m), "frozen-bn-updates").layer == "1"
    m[1].eval()
    with torch.no_grad():
        before = m[1].running_mean.clone()
        m(torch.randn(4, 1, 6, 6) + 3)
    assert torch.equal(before, m[1].running_mean)  # the fix does stop the updates
    m[1].num_batches_tracked.fill_(1)
    assert check_model(m) == []


def test_dropout_right_before_bn() -> None:
    bad = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.ReLU())
    good = nn.Sequential(nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
    for example in (None, torch.randn(4, 8)):
        assert by_code(check_model(bad, example), "dropout-before-bn").layer == "2"
        assert "dropout-before-bn" not in codes(check_model(good, example))


def test_missing_norm_in_a_deep_plain_net() -> None:
    plain = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(8, 8), nn.ReLU())])
    normed = nn.Sequential(
        *[m for _ in range(12) for m in (nn.Linear(8, 8), nkn.LayerNorm(8), nn.ReLU())]
    )
    f = by_code(check_model(plain), "missing-norm")
    assert f.value == 12
    assert check_model(normed) == []
    assert check_model(plain[:10]) == []  # 5 layers: not deep


def test_check_model_leaves_modes_and_buffers_alone() -> None:
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1), nn.ReLU())
    m[1].eval()
    state = copy.deepcopy(m.state_dict())
    modes = [x.training for x in m.modules()]
    check_model(m, torch.randn(3, 1, 5, 5) * 10)
    assert [x.training for x in m.modules()] == modes
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_example_input_forms() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.bn(self.lin(a + b))

    x = torch.randn(1, 4)
    for example in ((x, x), {"a": x, "b": x}):
        f = by_code(check_model(TwoIn(), example), "bn-batch-size-1")
        assert f.severity == "error"
    with pytest.raises(TypeError, match="expects a torch"):
        check_model(x)  # type: ignore[arg-type]


def test_bias_before_a_frozen_bn_is_redundant_too() -> None:
    class FrozenBN(nn.Module):  # torchvision.ops.FrozenBatchNorm2d's buffers, no momentum
        def __init__(self, c: int) -> None:
            super().__init__()
            for name, init in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
                self.register_buffer(name, torch.full((c,), float(init)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.weight * (self.running_var + 1e-5).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale[:, None, None] + shift[:, None, None]

    biased = nn.Sequential(nn.Conv2d(1, 4, 3), FrozenBN(4))
    assert not is_bn_like(biased[1])
    assert codes(check_model(biased, torch.randn(2, 1, 5, 5))) == {"bias-before-norm"}
    assert check_model(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), FrozenBN(4))) == []
