"""fold_batchnorm: folded vs unfolded outputs (the unfolded model with its BN layers is the
oracle), on fx-traceable and untraceable models; refusals and their reasons; the fold CLI."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import normkit.nn as nkn
from normkit.cli import main as cli_main
from normkit.inference import fold_batchnorm, register_foldable_norm
from normkit.inference.fold import _FOLDABLE, batchnorm_protocol

F64_TOL = 1e-10


def _stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running stats and affine params on every BN (as after training), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.3)
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _check(model: nn.Module, x: Tensor, n_folded: int, tol: float = F64_TOL):
    model = _stats(model.double())
    x = x.double()
    before = copy.deepcopy(model.state_dict())
    folded, report = fold_batchnorm(model, return_report=True)
    assert len(report.folded) == n_folded, str(report)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    err = (out - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), err
    # the original is untouched (not inplace)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    return folded, report


# ----------------------------------------------------------------------------- models


class Block(nn.Module):
    """ResNet basic block with skip connection and a conv+BN projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.proj(x))


def make_cnn() -> nn.Module:
    """A small ResNet-style CNN (also the --factory of the CLI test)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8, 8, 1),
        Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: pointwise expand, depthwise (dilated, reflect-padded), pointwise."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Conv2d(h, h, 3, padding=2, dilation=2, groups=h, padding_mode="reflect")
        self.dw_bn = nn.BatchNorm2d(h)
        self.pw = nn.Conv2d(h, c, 1, bias=False)
        self.pw_bn = nkn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x)
        y = nn.functional.relu6(self.dw_bn(self.dw(y)))
        return x + self.pw_bn(self.pw(y))


# ----------------------------------------------------------------------------- exactness


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_resnet_cnn_float64_scriptable_exportable():
    model = make_cnn()
    folded, report = _check(model, torch.randn(2, 3, 16, 16), n_folded=7)
    assert not report.skipped and not report.untraceable
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = folded(x)
        scripted = torch.jit.script(folded)
        assert torch.allclose(scripted(x), ref, rtol=0, atol=1e-12)
        exported = torch.export.export(folded, (x,))
        assert torch.allclose(exported.module()(x), ref, rtol=0, atol=1e-12)


def test_resnet_cnn_float32_relative():
    model = _stats(make_cnn())
    x = torch.randn(4, 3, 16, 16)
    folded = fold_batchnorm(model)
    ref64 = _stats(make_cnn().double())(x.double())  # same weights, float64 unfolded oracle
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert (out.double() - ref64).abs().max() <= 1e-5 * ref64.abs().max()


def test_mobilenet_block_depthwise_dilation_reflect_normkit_bn():
    model = nn.Sequential(InvertedResidual(4), InvertedResidual(4))
    folded, _ = _check(model, torch.randn(2, 4, 9, 9), n_folded=6)
    assert isinstance(folded[0].dw_bn, nn.Identity) and isinstance(folded[0].pw_bn, nn.Identity)
    assert folded[0].dw.bias is not None and folded[0].pw.bias is not None


def test_conv3d_net():
    model = nn.Sequential(
        nn.Conv3d(2, 6, 3, padding=1, groups=2, padding_mode="circular"),
        nkn.BatchNorm3d(6),
        nn.ReLU(),
        nn.Conv3d(6, 4, (1, 3, 3), stride=(1, 2, 2), bias=False),
        nn.BatchNorm3d(4),
    )
    _check(model, torch.randn(2, 2, 4, 8, 8), n_folded=2)


def test_conv_transpose_decoder():
    model = nn.Sequential(
        nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 6, 3, groups=6, dilation=2, bias=False),
        nn.BatchNorm2d(6),
        nn.ConvTranspose2d(6, 3, 2, stride=2),
        nn.BatchNorm2d(3),
    )
    _check(model, torch.randn(2, 8, 5, 5), n_folded=3)
    _check(
        nn.Sequential(nn.ConvTranspose1d(4, 6, 3, groups=2), nn.BatchNorm1d(6)),
        torch.randn(3, 4, 7),
        n_folded=1,
    )
    _check(
        nn.Sequential(nn.ConvTranspose3d(2, 4, 2, stride=2, bias=False), nkn.BatchNorm3d(4)),
        torch.randn(1, 2, 3, 3, 3),
        n_folded=1,
    )


def test_mlp_batchnorm1d_and_feature_last_bn():
    model = nn.Sequential(
        nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8), nkn.BatchNorm1d(8)
    )
    _check(model, torch.randn(16, 10), n_folded=2)
    # a sequence MLP: features last, normkit BatchNorm(axis=-1)
    seq = nn.Sequential(nn.Linear(6, 12, bias=False), nkn.BatchNorm(12, axis=-1), nn.GELU())
    _check(seq, torch.randn(4, 5, 6), n_folded=1)


class Unfoldable(nn.Module):
    """BNs that must be left alone: on the input, after an activation, after an add."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_act = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn_add = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn_act(torch.relu(self.conv(self.bn_in(x))))
        return self.bn_add(self.conv2(y) + y)


def test_bn_not_after_conv_left_alone():
    folded, report = _check(Unfoldable(), torch.randn(2, 3, 6, 6), n_folded=0)
    reasons = {s.norm: s.reason for s in report.skipped}
    assert set(reasons) == {"bn_in", "bn_act", "bn_add"}
    assert "not the output of a Conv" in reasons["bn_in"]
    assert "ReLU" in reasons["bn_act"] or "not the output" in reasons["bn_act"]
    assert all(isinstance(getattr(folded, n), nn.BatchNorm2d) for n in reasons)


@settings(max_examples=25, deadline=None)
@given(
    dims=st.sampled_from([1, 2]),
    transpose=st.booleans(),
    groups=st.sampled_from([1, 2, 4]),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
)
def test_conv_hyperparameters(dims, transpose, groups, stride, dilation, bias, padding_mode):
    cin, cout = 4, 8
    if transpose:
        conv_cls = (nn.ConvTranspose1d, nn.ConvTranspose2d)[dims - 1]
        conv = conv_cls(cin, cout, 3, stride, groups=groups, dilation=dilation, bias=bias)
    else:
        conv_cls = (nn.Conv1d, nn.Conv2d)[dims - 1]
        conv = conv_cls(
            cin,
            cout,
            3,
            stride,
            1,
            groups=groups,
            dilation=dilation,
            bias=bias,
            padding_mode=padding_mode,
        )
    bn = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](cout)
    _check(nn.Sequential(conv, bn), torch.randn(2, cin, *([7] * dims)), n_folded=1)


# ----------------------------------------------------------------------------- untraceable


class DataDependent(nn.Module):
    """fx cannot trace it (control flow on a tensor value)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = Block(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        if y.sum() > 0:
            y = y * 2
        return self.head(self.bn(self.conv(y)))


def test_untraceable_model_structural_matching():
    _, report = _check(DataDependent(), torch.randn(2, 3, 12, 12), n_folded=4)
    assert "<root>" in report.untraceable
    kept = {s.norm: s.reason for s in report.skipped}
    assert list(kept) == ["bn"]
    assert "torch.fx" in kept["bn"] and "Sequential" in kept["bn"]
    assert {p.norm for p in report.folded} == {"stem.1", "head.bn1", "head.bn2", "head.proj.1"}


# ----------------------------------------------------------------------------- bad input


def test_training_mode_model_refused():
    with pytest.raises(ValueError, match=r"eval mode.*model\.eval\(\)"):
        fold_batchnorm(make_cnn().train())


def test_untracked_bn_and_training_bn_reported():
    model = _stats(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4, track_running_stats=False),
            nn.Conv2d(4, 4, 3),
            nn.BatchNorm2d(4),
        )
    )
    model[3].train()
    folded, report = fold_batchnorm(model, return_report=True)
    assert not report.folded
    reasons = {s.norm: s.reason for s in report.skipped}
    assert "track_running_stats=False" in reasons["1"] and "cannot be folded" in reasons["1"]
    assert "training mode" in reasons["3"]
    assert isinstance(folded[1], nn.BatchNorm2d) and isinstance(folded[3], nn.BatchNorm2d)


class SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


class TwiceUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_shared_bn_and_bn_input_used_twice():
    _, report = _check(SharedBN(), torch.randn(2, 3, 4, 4), n_folded=0)
    assert "shared" in report.skipped[0].reason
    _, report = _check(TwiceUsed(), torch.randn(2, 3, 4, 4), n_folded=0)
    assert "also used" in report.skipped[0].reason
    # the same BN module registered twice in a Sequential: shared by identity
    bn = nn.BatchNorm2d(3)
    seq = nn.Sequential(nn.Conv2d(3, 3, 1), bn, nn.Conv2d(3, 3, 1), bn)
    _, report = _check(seq, torch.randn(1, 3, 4, 4), n_folded=0)
    assert "shared" in report.skipped[0].reason


def test_inplace():
    model = _stats(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    out = fold_batchnorm(model, inplace=True)
    assert out is model and isinstance(model[1], nn.Identity)


# ----------------------------------------------------------------------------- the table


class BNAct(nn.BatchNorm2d):
    """A norm+activation layer (the NormAct pattern): BN then SiLU."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class Frozen(nn.Module):
    """A FrozenBatchNorm-like layer: only buffers, fixed statistics."""

    def __init__(self, c: int) -> None:
        super().__init__()
        for name, v in (("weight", 1.5), ("bias", 0.2), ("running_mean", 0.3), ("running_var", 2)):
            self.register_buffer(name, torch.full((c,), float(v)))
        self.eps = 1e-3

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


def test_registered_norm_act_keeps_activation(monkeypatch):
    monkeypatch.setitem(_FOLDABLE, BNAct, lambda m: batchnorm_protocol(m, activation=m.act))
    monkeypatch.setitem(_FOLDABLE, Frozen, batchnorm_protocol)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4), nn.Conv2d(4, 4, 3), Frozen(4))
    folded, report = _check(model, torch.randn(2, 3, 8, 8), n_folded=2)
    assert isinstance(folded[1], nn.SiLU) and isinstance(folded[3], nn.Identity)
    assert report.folded[0].activation == "SiLU"


def test_register_foldable_norm_public():
    class MyBN(nn.BatchNorm1d):
        pass

    try:
        register_foldable_norm(MyBN)
        _check(nn.Sequential(nn.Linear(3, 5), MyBN(5)), torch.randn(4, 3), n_folded=1)
    finally:
        _FOLDABLE.pop(MyBN)


# ----------------------------------------------------------------------------- CLI


def test_cli_factory_and_trust(tmp_path, capsys):
    model = _stats(make_cnn())
    sd = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), sd)
    out = tmp_path / "folded.pt"
    rc = cli_main(
        [
            "fold",
            str(sd),
            str(out),
            "--factory",
            "tests.test_inference_fold:make_cnn",
            "--state-dict",
            "--input-shape",
            "1,3,8,8",
        ]
    )
    assert rc == 0
    assert "7 folded" in capsys.readouterr().out
    target = fold_batchnorm(make_cnn().eval())
    target.load_state_dict(torch.load(out, weights_only=True))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(target(x), model(x), rtol=1e-5, atol=1e-5)

    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    with pytest.raises(SystemExit, match="--trust"):
        cli_main(["fold", str(whole), str(out)])
    assert cli_main(["fold", str(whole), str(out), "--trust"]) == 0
    loaded = torch.load(out, weights_only=False)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)


class ReadsWeight(nn.Module):
    """forward reads conv.weight directly (e.g. a weight penalty term): folding must not happen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) * self.conv.weight.sum()


def test_tied_weights_and_direct_weight_reads_block_folding():
    _, report = _check(ReadsWeight(), torch.randn(2, 3, 4, 4), n_folded=0)
    assert "reads the weights" in report.skipped[0].reason
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b, nn.BatchNorm1d(4))
    _, report = _check(model, torch.randn(5, 4), n_folded=0)
    assert "tied" in report.skipped[0].reason


# every normkit batch-norm variant this normkit ships: (name, constructor kwargs, activation kept)
VARIANTS = [
    ("BatchRenorm2d", {}, None),
    ("GhostBatchNorm2d", {"virtual_batch_size": 2}, None),
    ("SyncBatchNorm", {}, None),
    ("BatchNormalization", {"axis": 1}, None),
    ("FrozenBatchNorm2d", {}, None),
    ("BatchNormAct2d", {"act": "silu"}, nn.SiLU),
    ("FrozenBatchNormAct2d", {"act": "gelu"}, nn.GELU),
    ("SyncBatchNormAct2d", {"act": "relu"}, nn.ReLU),
]


@pytest.mark.parametrize(("name", "kwargs", "act"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_normkit_batchnorm_variants_fold(name, kwargs, act):
    cls = getattr(nkn, name, None)
    if cls is None:
        pytest.skip(f"this normkit has no {name}")
    norm = cls(num_features=4, **kwargs) if name == "BatchNormalization" else cls(4, **kwargs)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), norm, nn.Conv2d(4, 2, 1))
    folded, report = _check(model, torch.randn(4, 3, 6, 6), n_folded=1)
    if act is None:
        assert isinstance(folded[1], nn.Identity)
    else:
        assert report.folded[0].activation is not None
        assert any(isinstance(m, act) for m in folded[1].modules())


def test_frozen_bn_in_training_mode_still_folds():
    if not hasattr(nkn, "FrozenBatchNorm1d"):
        pytest.skip("this normkit has no FrozenBatchNorm1d")
    model = _stats(nn.Sequential(nn.Linear(3, 4), nkn.FrozenBatchNorm1d(4)).double())
    model[1].train()  # a frozen BN uses its running statistics in training mode too
    x = torch.randn(5, 3, dtype=torch.float64)
    folded, report = fold_batchnorm(model, return_report=True)
    assert len(report.folded) == 1
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


def test_parametrized_or_hooked_weights_are_not_folded():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    _, report = _check(nn.Sequential(conv, nn.BatchNorm2d(4)), torch.randn(2, 3, 6, 6), 0)
    assert "parametrized" in report.skipped[0].reason
    lin = nn.Linear(3, 4)
    lin.register_forward_hook(lambda m, i, o: o * 2)
    _, report = _check(nn.Sequential(lin, nn.BatchNorm1d(4)), torch.randn(5, 3), 0)
    assert "hooks" in report.skipped[0].reason
    observed = nn.Linear(3, 4)
    observed.register_forward_hook(lambda m, i, o: None)  # observes only: folding is fine
    _, report = _check(nn.Sequential(observed, nn.BatchNorm1d(4)), torch.randn(5, 3), 1)

    class Scaled(nn.Conv2d):  # a subclass whose forward is not the conv of its weight
        def forward(self, x):
            return super().forward(x) * 2

    _, report = _check(
        nn.Sequential(Scaled(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(2, 3, 6, 6), 0
    )
    assert "overrides Conv2d.forward" in report.skipped[0].reason
