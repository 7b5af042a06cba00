"""The CNN norm zoo against timm's layers (test oracle, float64 ≤ 1e-12 for outputs and
gradients, state_dicts load both ways) and the papers' formulas; weight standardization
against timm's StdConv2d/ScaledStdConv2d."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import normkit.nn as nkn
from tests.timm_oracle import layer

F64 = torch.float64


def _x(*shape: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * 1.5 + 0.3


def _randomize(m: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)


# timm computes EvoNorm/FRN statistics with ``x.float()`` even for float64 inputs, so for those
# it is an oracle at float32 precision; the float64 formula tests below pin them to 1e-12.
F32_TOL = 2e-6


def _same_fwd_bwd(ours: nn.Module, theirs: nn.Module, x: Tensor, tol: float = 1e-12) -> None:
    """Outputs and every gradient (input, parameters) equal; theirs' state loaded into ours."""
    _randomize(theirs)
    ours.load_state_dict(theirs.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    gy = torch.randn_like(ya)
    (ya * gy).sum().backward()
    (yb * gy).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)
    pa, pb = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k].grad, pb[k].grad, rtol=tol, atol=tol, msg=k)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("channels_last", [True, False])
def test_global_response_norm_equals_timm(channels_last: bool):
    timm = layer("grn").GlobalResponseNorm(6, channels_last=channels_last).double()
    ours = nkn.GlobalResponseNorm(6, channels_last=channels_last, dtype=F64)
    x = _x(2, 5, 4, 6) if channels_last else _x(2, 6, 5, 4)
    _same_fwd_bwd(ours, timm, x)


def test_global_response_norm_formula_and_identity_at_init():
    x = _x(2, 3, 3, 4)
    assert torch.equal(nkn.GlobalResponseNorm(4, dtype=F64)(x), x)
    g = x.pow(2).sum((1, 2), keepdim=True).sqrt()
    n = g / (g.mean(-1, keepdim=True) + 1e-6)
    grn = nkn.GlobalResponseNorm(4, dtype=F64)
    with torch.no_grad():
        grn.weight.fill_(2.0)
        grn.bias.fill_(-1.0)
    torch.testing.assert_close(grn(x), x + 2.0 * x * n - 1.0)
    with pytest.raises(ValueError, match="channels_last="):
        grn(_x(2, 4, 3, 3))


@pytest.mark.parametrize("train", [True, False])
def test_evonorm_b0_equals_timm(train: bool):
    timm = layer("evo_norm").EvoNorm2dB0(8).train(train)
    ours = nkn.EvoNorm2dB0(8).train(train)
    timm.running_var.uniform_(0.5, 2)
    _same_fwd_bwd(ours, timm, _x(4, 8, 5, 5).float(), F32_TOL)


@pytest.mark.parametrize("train", [True, False])
def test_evonorm_b0_formula_float64(train: bool):
    m = nkn.EvoNorm2dB0(3, dtype=F64).train(train)
    _randomize(m)
    m.running_var.copy_(torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    x = _x(4, 3, 5, 5)
    batch_var = x.var((0, 2, 3), unbiased=False) if train else m.running_var.clone()
    left = (batch_var + 1e-3).sqrt().view(1, 3, 1, 1)
    right = x * m.v.view(1, 3, 1, 1) + (x.var((2, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()
    ref = x / torch.maximum(left, right) * m.weight.view(1, 3, 1, 1) + m.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    if train:
        expect = 0.9 * torch.tensor([0.5, 1.0, 2.0], dtype=F64) + 0.1 * x.var((0, 2, 3))
        torch.testing.assert_close(m.running_var, expect, rtol=1e-12, atol=1e-12)


def test_evonorm_b0_nan_batch_leaves_running_var():
    ours = nkn.EvoNorm2dB0(4, dtype=F64)
    x = _x(2, 4, 3, 3)
    x[0, 1, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        ours(x)
    assert torch.equal(ours.running_var, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="more than one value"):
        ours(_x(1, 4, 1, 1))


@pytest.mark.parametrize(
    "kw", [{"groups": 4}, {"group_size": 2}, {"groups": 2, "apply_act": False}]
)
def test_evonorm_s0_equals_timm(kw):
    timm = layer("evo_norm").EvoNorm2dS0(8, **kw)
    ours = nkn.EvoNorm2dS0(8, **kw)
    _same_fwd_bwd(ours, timm, _x(3, 8, 4, 5).float(), F32_TOL)
    with pytest.raises(ValueError, match="divide"):
        nkn.EvoNorm2dS0(8, groups=3)


def test_evonorm_s0_formula_float64():
    m = nkn.EvoNorm2dS0(4, groups=2, dtype=F64)
    _randomize(m)
    x = _x(2, 4, 3, 3)
    std = (x.reshape(2, 2, -1).var(-1, unbiased=False) + 1e-5).sqrt().repeat_interleave(2, 1)
    v, w, b = (t.view(1, 4, 1, 1) for t in (m.v, m.weight, m.bias))
    ref = x * torch.sigmoid(v * x) / std.view(2, 4, 1, 1) * w + b
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tlu", [True, False])
def test_filter_response_norm_equals_timm(tlu: bool):
    timm = layer("filter_response_norm").FilterResponseNormTlu2d(6, apply_act=tlu)
    ours = nkn.FilterResponseNorm2d(6, eps=1e-5, tlu=tlu)
    _same_fwd_bwd(ours, timm, _x(2, 6, 4, 4).float(), F32_TOL)


def test_filter_response_norm_formula_and_tlu_module():
    x = _x(2, 3, 4, 4)
    frn = nkn.FilterResponseNorm2d(3, tlu=False, dtype=F64)
    ref = x / (x.pow(2).mean((2, 3), keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(frn(x), ref, rtol=1e-12, atol=1e-12)
    tlu = nkn.TLU(3, dtype=F64)
    with torch.no_grad():
        tlu.tau.copy_(torch.tensor([0.0, 0.5, -1.0], dtype=F64))
    torch.testing.assert_close(tlu(ref), torch.maximum(ref, tlu.tau.view(1, 3, 1, 1)))


def test_split_batchnorm_equals_timm_in_train_and_eval():
    timm = layer("split_batchnorm").SplitBatchNorm2d(5, num_splits=3).double()
    ours = nkn.SplitBatchNorm2d(5, num_splits=3, dtype=F64)
    x = _x(6, 5, 3, 3)
    _same_fwd_bwd(ours, timm, x)
    _same_fwd_bwd(ours.eval(), timm.eval(), x)
    with pytest.raises(ValueError, match="divisible by 3"):
        ours.train()(_x(4, 5, 2, 2))


@pytest.mark.parametrize("cls_name", ["StdConv2d", "ScaledStdConv2d"])
@pytest.mark.parametrize("kw", [{}, {"stride": 2, "groups": 2}, {"padding": 0, "dilation": 2}])
def test_weight_standardized_convs_equal_timm(cls_name: str, kw):
    timm = getattr(layer("std_conv"), cls_name)(4, 6, 3, **kw).double()
    ours = getattr(nkn, cls_name)(4, 6, 3, **kw, dtype=F64)
    _same_fwd_bwd(ours, timm, _x(2, 4, 7, 7))


def test_standardized_weight_formula_and_half_precision():
    conv = nkn.ScaledStdConv2d(3, 4, 3, gamma=1.7, dtype=F64)
    w = conv.weight.reshape(4, -1)
    ref = (w - w.mean(1, keepdim=True)) / (w.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    ref = ref * conv.gain.reshape(4, 1) * 1.7 / 27**0.5
    torch.testing.assert_close(conv.standardized_weight().reshape(4, -1), ref)
    half = nkn.StdConv2d(3, 4, 3, dtype=torch.bfloat16)
    wb = half.standardized_weight()
    assert wb.dtype == torch.bfloat16
    w64 = half.weight.double().reshape(4, -1)
    ref = (w64 - w64.mean(1, keepdim=True)) / (
        w64.var(1, unbiased=False, keepdim=True) + 1e-6
    ).sqrt()
    torch.testing.assert_close(wb.double().reshape(4, -1), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nkn.GlobalResponseNorm(4, channels_last=False),
        lambda: nkn.EvoNorm2dB0(4),
        lambda: nkn.EvoNorm2dS0(4, groups=2),
        lambda: nkn.FilterResponseNorm2d(4),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_stay_half_and_close_to_float64(make, dtype):
    m64 = make().double()
    _randomize(m64)
    m = make().to(dtype)
    m.load_state_dict(m64.state_dict())
    x = _x(2, 4, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = m(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), m64(x), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nkn.GlobalResponseNorm(3), (2, 3, 2, 3)),
        (lambda: nkn.EvoNorm2dB0(3), (3, 3, 2, 2)),
        (lambda: nkn.EvoNorm2dS0(4, groups=2), (2, 4, 2, 2)),
        (lambda: nkn.FilterResponseNorm2d(3), (2, 3, 2, 2)),
        (lambda: nkn.StdConv2d(2, 3, 3), (1, 2, 4, 4)),
        (lambda: nkn.ScaledStdConv2d(2, 3, 3), (1, 2, 4, 4)),
    ],
)
def test_gradcheck_float64(make, shape):
    m = make().double()
    _randomize(m)
    x = _x(*shape).requires_grad_()
    params = tuple(p for p in m.parameters())
    fn = torch.func.functional_call
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        return fn(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *(p.detach().requires_grad_() for p in params)))
