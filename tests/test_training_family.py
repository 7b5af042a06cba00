"""Training-time norms: BatchRenorm, GhostBatchNorm, FrozenBatchNorm (+ freeze/unfreeze), the
norm+activation layers, and nan_policy on all of them.

Oracles: torch.nn.BatchNorm* (reductions, per-chunk BN, eval BN), torch.nn activations, a numpy
float64 evaluation of the batch-renorm formula of Ioffe 2017, and float64 gradcheck.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normkit.functional as NF
import normkit.nn as nkn

F64 = torch.float64


def _x(shape: tuple[int, ...], seed: int = 0, scale: float = 2.0, shift: float = 0.5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64) * scale + shift


def _same_params(*mods: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    c = mods[0].weight.shape[0]
    w = torch.rand(c, generator=g, dtype=F64) + 0.5
    b = torch.randn(c, generator=g, dtype=F64)
    rm = torch.randn(c, generator=g, dtype=F64)
    rv = torch.rand(c, generator=g, dtype=F64) + 0.5
    with torch.no_grad():
        for m in mods:
            m.weight.copy_(w)
            m.bias.copy_(b)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(rm)
                m.running_var.copy_(rv)


def _step(m: nn.Module, x: Tensor, gseed: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(gseed), dtype=F64)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in m.named_parameters()}


def _assert_same_run(a: nn.Module, b: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    for s in range(steps):
        x = _x(shape, seed=s)
        (ya, gxa, gpa), (yb, gxb, gpb) = _step(a, x, 10 + s), _step(b, x, 10 + s)
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(gxa, gxb)
        for k in gpa:
            torch.testing.assert_close(gpa[k], gpb[k])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


# --------------------------------------------------------------------------- BatchRenorm


def test_batch_renorm_with_rmax1_dmax0_is_batch_norm():
    ours = nkn.BatchRenorm2d(5, r_max=1.0, d_max=0.0).double()
    oracle = nn.BatchNorm2d(5).double()
    _same_params(ours, oracle)
    _assert_same_run(ours, oracle, (6, 5, 3, 4))
    ours.eval(), oracle.eval()
    x = _x((2, 5, 3, 4), seed=9)
    torch.testing.assert_close(ours(x), oracle(x))


def _renorm_oracle(x: np.ndarray, rm, rv, w, b, eps, r_max, d_max) -> tuple[np.ndarray, ...]:
    """Ioffe 2017, Algorithm 1, for (N, C, H, W) in float64 numpy."""
    mu = x.mean(axis=(0, 2, 3))
    sigma_b = np.sqrt(x.var(axis=(0, 2, 3)) + eps)
    sigma = np.sqrt(rv + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu - rm) / sigma, -d_max, d_max)
    c = (slice(None), None, None)
    xhat = (x - mu[c]) / sigma_b[c] * r[c] + d[c]
    return w[c] * xhat + b[c], r, d


def test_batch_renorm_matches_the_paper_formula_and_bn_with_corrected_affine():
    ours = nkn.BatchRenorm2d(4, r_max=1.5, d_max=0.5).double()
    oracle_bn = nn.BatchNorm2d(4).double()
    _same_params(ours, oracle_bn)
    for step in range(3):
        x = _x((5, 4, 3, 3), seed=step, scale=3.0, shift=1.0)
        rm, rv = ours.running_mean.numpy().copy(), ours.running_var.numpy().copy()
        w, b = ours.weight.detach().numpy(), ours.bias.detach().numpy()
        expect, r, d = _renorm_oracle(x.numpy(), rm, rv, w, b, ours.eps, 1.5, 0.5)
        if step == 0:  # the clipping is active somewhere, else this test proves little
            assert np.any(np.isclose(np.abs(r), 1.5)) or np.any(np.isclose(np.abs(d), 0.5))
        xg = x.clone().requires_grad_()
        y = ours(xg)
        np.testing.assert_allclose(y.detach().numpy(), expect, rtol=1e-10, atol=1e-10)
        # r, d carry no gradient: the input gradient is BN's with weight γ·r (torch oracle)
        g = _x(tuple(y.shape), seed=50 + step)
        (y * g).sum().backward()
        xo = x.clone().requires_grad_()
        wr = torch.as_tensor(w * r)
        yo = F.batch_norm(xo, None, None, wr, torch.as_tensor(w * d + b), True)
        (yo * g).sum().backward()
        torch.testing.assert_close(xg.grad, xo.grad)
        # running statistics move exactly as batch norm's
        oracle_bn(x)
        torch.testing.assert_close(ours.running_mean, oracle_bn.running_mean)
        torch.testing.assert_close(ours.running_var, oracle_bn.running_var)


def test_batch_renorm_gradcheck_with_active_clipping():
    m = nkn.BatchRenorm1d(3, momentum=0.0, r_max=1.2, d_max=0.1).double()
    _same_params(m)
    m.running_mean.fill_(10.0)  # d clipped at -d_max and r at r_max: both locally constant
    m.running_var.fill_(0.05)
    x = _x((6, 3), seed=3, scale=3.0).requires_grad_()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_batch_renorm_warmup_and_schedule():
    m = nkn.BatchRenorm1d(3, r_max=3.0, d_max=5.0, warmup_steps=4).double()
    bn = nn.BatchNorm1d(3).double()
    _same_params(m, bn)
    x = _x((8, 3), seed=1, scale=5.0)
    torch.testing.assert_close(m(x), bn(x))  # step 0 of the warm-up: plain batch norm
    for _ in range(3):
        m(x)
    r, d = m.clip_limits()  # 4 steps done: fully relaxed
    assert float(r) == pytest.approx(3.0) and float(d) == pytest.approx(5.0)
    m.num_batches_tracked.fill_(2)
    r, d = m.clip_limits()
    assert float(r) == pytest.approx(2.0) and float(d) == pytest.approx(2.5)

    seen: list[int] = []

    def schedule(step: int) -> tuple[float, float]:
        seen.append(step)
        return 1.0, 0.0

    s = nkn.BatchRenorm1d(3, schedule=schedule).double()
    bn2 = nn.BatchNorm1d(3).double()
    _same_params(s, bn2)
    for k in range(2):
        torch.testing.assert_close(s(_x((8, 3), seed=k)), bn2(_x((8, 3), seed=k)))
    assert seen == [0, 1]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_renorm_fast_path_equals_the_general_path(fmt: torch.memory_format, momentum):
    """The native two-pass path (float32, auto) against the composed reference path: outputs,
    gradients, running buffers and the batch counter over a few steps, clipping active."""
    fast = nkn.BatchRenorm2d(4, momentum=momentum, r_max=1.5, d_max=0.5)
    slow = nkn.BatchRenorm2d(4, momentum=momentum, r_max=1.5, d_max=0.5, backend="reference")
    _same_params(fast.double(), slow.double())
    fast.float(), slow.float()
    for s in range(3):
        x = _x((5, 4, 3, 3), seed=s, scale=3.0, shift=1.0).float()
        x = x.contiguous(memory_format=fmt)
        (ya, gxa, gpa), (yb, gxb, gpb) = _step(fast, x, 10 + s), _step(slow, x, 10 + s)
        assert ya.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(gxa, gxb)
        for k in gpa:
            torch.testing.assert_close(gpa[k], gpb[k])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name))


@pytest.mark.parametrize(("x_grad", "p_grad"), [(False, True), (True, False)])
@pytest.mark.parametrize("layer", ["brn", "gbn"])
def test_native_paths_with_gradients_for_the_input_or_the_parameters_only(layer, x_grad, p_grad):
    """The native autograd.Functions when only the input or only the parameters need a gradient
    (a first layer on raw data; frozen affine): the same gradients as with both."""
    make = {
        "brn": lambda: nkn.BatchRenorm2d(4, r_max=1.5, d_max=0.5),
        "gbn": lambda: nkn.GhostBatchNorm2d(4, virtual_batch_size=3),
    }[layer]
    x = _x((8, 4, 3, 3), seed=4).float().contiguous(memory_format=torch.channels_last)
    both, some = make(), make()
    for p in some.parameters():
        p.requires_grad_(p_grad)
    xb, xs = x.clone().requires_grad_(), x.clone().requires_grad_(x_grad)
    both(xb).square().sum().backward()
    some(xs).square().sum().backward()
    if x_grad:
        torch.testing.assert_close(xs.grad, xb.grad)
    if p_grad:
        torch.testing.assert_close(some.weight.grad, both.weight.grad)
        torch.testing.assert_close(some.bias.grad, both.bias.grad)


def test_batch_renorm_bad_input():
    with pytest.raises(ValueError, match="r_max must be >= 1"):
        nkn.BatchRenorm2d(4, r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        nkn.BatchRenorm2d(4, d_max=-1.0)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        nkn.BatchRenorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="not both"):
        nkn.BatchRenorm2d(4, warmup_steps=3, schedule=lambda s: (1.0, 0.0))
    with pytest.raises(ValueError, match="r_max must be >= 1"):
        NF.batch_renorm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, r_max=0.9)


# --------------------------------------------------------------------------- GhostBatchNorm


class _ChunkedBN(nn.Module):
    """Oracle: torch.nn.BatchNorm applied to each block of ``v`` samples in turn."""

    def __init__(self, bn: nn.Module, v: int) -> None:
        super().__init__()
        self.bn, self.v = bn, v

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.bn(x)
        return torch.cat([self.bn(c) for c in x.split(self.v)])


@pytest.mark.parametrize(("n", "v"), [(12, 4), (10, 4), (8, 8)], ids=["even", "remainder", "whole"])
def test_ghost_batch_norm_is_batch_norm_per_virtual_batch(n: int, v: int):
    ours = nkn.GhostBatchNorm2d(3, virtual_batch_size=v).double()
    bn = nn.BatchNorm2d(3).double()
    _same_params(ours, bn)
    oracle = _ChunkedBN(bn, v)
    for s in range(2):
        x = _x((n, 3, 2, 2), seed=s)
        (y, gx, gp), (yo, gxo, gpo) = _step(ours, x, s), _step(oracle, x, s)
        torch.testing.assert_close(y, yo)
        torch.testing.assert_close(gx, gxo)
        torch.testing.assert_close(gp["weight"], gpo["bn.weight"])
        torch.testing.assert_close(gp["bias"], gpo["bn.bias"])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(bn, name))
    if v == n:  # the whole batch as one virtual batch is plain batch norm
        plain = nn.BatchNorm2d(3).double()
        plain.load_state_dict(ours.state_dict())
        twin = copy.deepcopy(ours)
        x = _x((n, 3, 2, 2), seed=7)
        torch.testing.assert_close(twin(x), plain(x))
        torch.testing.assert_close(twin.running_var, plain.running_var)
    ours.eval(), bn.eval()
    x = _x((2, 3, 2, 2), seed=5)
    torch.testing.assert_close(ours(x), bn(x))


def test_ghost_batch_norm_bad_input_and_channels_last():
    m = nkn.GhostBatchNorm1d(3, virtual_batch_size=16)
    with pytest.raises(ValueError, match="virtual_batch_size must be between 1 and the batch"):
        m(torch.randn(8, 3))
    with pytest.raises(ValueError, match="last virtual batch would hold 1 sample"):
        nkn.GhostBatchNorm1d(3, virtual_batch_size=4)(torch.randn(9, 3))
    with pytest.raises(ValueError, match="positive"):
        nkn.GhostBatchNorm1d(3, virtual_batch_size=0)
    # features last: the same as features first, transposed
    last, first = nkn.GhostBatchNorm(3, virtual_batch_size=3, axis=-1), nkn.GhostBatchNorm1d(3)
    first.virtual_batch_size = 3
    x = torch.randn(9, 5, 3)
    torch.testing.assert_close(last(x), first(x.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(last.running_var, first.running_var)
    x = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y = nkn.GhostBatchNorm2d(3, virtual_batch_size=4)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_ghost_batch_norm_native_path_equals_torch_bn_per_virtual_batch(fmt, momentum):
    """The float32 native path (virtual batches written into slices of one output), both
    layouts, a short last virtual batch: outputs, gradients and buffers as chunked torch BN."""
    ours = nkn.GhostBatchNorm2d(3, virtual_batch_size=4, momentum=momentum)
    bn = nn.BatchNorm2d(3, momentum=momentum)
    _same_params(ours.double(), bn.double())
    ours.float(), bn.float()
    oracle = _ChunkedBN(bn, 4)
    for s in range(2):
        x = _x((10, 3, 3, 2), seed=s).float().contiguous(memory_format=fmt)
        (y, gx, gp), (yo, gxo, gpo) = _step(ours, x, s), _step(oracle, x, s)
        assert y.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(y, yo)
        torch.testing.assert_close(gx, gxo)
        torch.testing.assert_close(gp["weight"], gpo["bn.weight"])
        torch.testing.assert_close(gp["bias"], gpo["bn.bias"])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(bn, name))


def test_ghost_batch_norm_gradcheck():
    m = nkn.GhostBatchNorm1d(2, virtual_batch_size=3).double()
    _same_params(m)
    x = _x((7, 2, 2), seed=2).requires_grad_()  # virtual batches of 3, 3 (one call) and 1
    w, b = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,)), (x, w, b)
    )


# --------------------------------------------------------------------------- FrozenBatchNorm


def test_frozen_batch_norm_is_eval_batch_norm_in_every_mode():
    bn = nn.BatchNorm2d(4).double()
    _same_params(bn)
    frozen = nkn.FrozenBatchNorm2d(4, requires_grad=True).double()
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped
    bn.eval()
    frozen.train()
    before = copy.deepcopy(frozen.state_dict())
    for s in range(2):
        (y, gx, gp), (yo, gxo, gpo) = (
            _step(frozen, _x((1, 4, 3, 3), s), s),
            _step(bn, _x((1, 4, 3, 3), s), s),
        )
        torch.testing.assert_close(y, yo)
        torch.testing.assert_close(gx, gxo)
        torch.testing.assert_close(gp["weight"], gpo["weight"])
    for k in ("running_mean", "running_var"):
        assert torch.equal(frozen.state_dict()[k], before[k])
        assert not frozen.state_dict()[k].requires_grad
    fully = nkn.FrozenBatchNorm2d(4).double()
    fully.load_state_dict(bn.state_dict())
    xf = _x((1, 4, 3, 3), 7).requires_grad_()
    xo = xf.detach().clone().requires_grad_()
    fully(xf).square().sum().backward()
    bn(xo).square().sum().backward()
    torch.testing.assert_close(xf.grad, xo.grad)
    assert list(fully.parameters()) == [] and set(fully.state_dict()) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
    }


def test_freeze_and_unfreeze_a_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nkn.BatchNormAct2d(4, act="silu"),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nkn.BatchNorm1d(5),
    ).double()
    model.train()
    for s in range(2):  # non-trivial running statistics
        model(_x((4, 3, 8, 8), seed=s))
    x = _x((2, 3, 8, 8), seed=9)
    expect = copy.deepcopy(model).eval()(x)
    frozen = nkn.freeze_batchnorm(copy.deepcopy(model))
    assert isinstance(frozen[1], nkn.FrozenBatchNorm2d)
    assert isinstance(frozen[2], nkn.FrozenBatchNormAct2d)
    assert isinstance(frozen[5], nkn.FrozenBatchNorm1d)
    frozen.train()
    torch.testing.assert_close(frozen(x), expect)
    trainable = {n for n, p in frozen.named_parameters()}
    assert trainable == {"0.weight", "0.bias", "4.weight", "4.bias"}
    back = nkn.unfreeze_batchnorm(frozen)
    assert type(back[1]) is nn.BatchNorm2d and type(back[2]) is nkn.BatchNormAct2d
    assert type(back[5]) is nkn.BatchNorm1d
    for (ka, va), (kb, vb) in zip(
        back.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert ka == kb
        torch.testing.assert_close(va, vb)
    # affine-trainable freezing
    half = nkn.freeze_batchnorm(copy.deepcopy(model), requires_grad=True)
    assert {"1.weight", "1.bias", "2.weight", "2.bias"} <= {n for n, _ in half.named_parameters()}
    with pytest.raises(ValueError, match="no running statistics"):
        nkn.freeze_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))


# --------------------------------------------------------------------------- norm + activation


@pytest.mark.parametrize(
    ("act", "oracle_act"),
    [("relu", nn.ReLU()), ("gelu", nn.GELU()), ("silu", nn.SiLU()), ("identity", nn.Identity())],
)
def test_batch_norm_act_is_batch_norm_then_act(act: str, oracle_act: nn.Module):
    ours = nkn.BatchNormAct2d(4, act=act).double()
    oracle = nn.Sequential(nn.BatchNorm2d(4), oracle_act).double()
    oracle[0].load_state_dict(ours.state_dict(), strict=True)  # same state_dict as BatchNorm2d
    _same_params(ours, oracle[0])
    for s in range(2):
        (y, gx, gp), (yo, gxo, gpo) = (
            _step(ours, _x((3, 4, 2, 2), s), s),
            _step(oracle, _x((3, 4, 2, 2), s), s),
        )
        torch.testing.assert_close(y, yo)
        torch.testing.assert_close(gx, gxo)
        torch.testing.assert_close(gp["weight"], gpo["0.weight"])
    torch.testing.assert_close(ours.running_var, oracle[0].running_var)


def test_group_and_layer_norm_act_and_inplace():
    x = _x((2, 6, 3, 3), seed=1)
    gna = nkn.GroupNormAct(3, 6, act="gelu").double()
    gn = nn.GroupNorm(3, 6).double()
    gn.load_state_dict(gna.state_dict(), strict=True)
    torch.testing.assert_close(gna(x), F.gelu(gn(x)))
    lna = nkn.LayerNormAct(3, act=torch.tanh).double()
    ln = nn.LayerNorm(3).double()
    ln.load_state_dict(lna.state_dict(), strict=True)
    torch.testing.assert_close(lna(x), torch.tanh(ln(x)))
    # in-place activation: same values and gradients as out-of-place
    for make in (lambda **k: nkn.BatchNormAct2d(6, **k), lambda **k: nkn.GroupNormAct(2, 6, **k)):
        a, b = make(act="relu", inplace=True).double(), make(act="relu").double()
        (ya, gxa, _), (yb, gxb, _) = _step(a, x, 3), _step(b, x, 3)
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(gxa, gxb)
    with pytest.raises(ValueError, match="unknown activation"):
        nkn.BatchNormAct2d(4, act="swishy")


def test_registry_builds_the_new_layers():
    assert type(nkn.get_norm("brn2d", 8)) is nkn.BatchRenorm2d
    assert nkn.get_norm("gbn2d", 8, virtual_batch_size=4).virtual_batch_size == 4
    assert type(nkn.get_norm("frozenbn2d", 8)) is nkn.FrozenBatchNorm2d
    assert type(nkn.get_norm("bnact2d", 8, act="gelu").act) is nn.GELU
    assert type(nkn.get_norm("gnact", 64)) is nkn.GroupNormAct
    assert nkn.get_norm("keras_bn", 8).num_features == 8
    assert type(nkn.get_norm("syncbn", 8)) is nkn.SyncBatchNorm


# --------------------------------------------------------------------------- nan_policy


_NAN_LAYERS = {
    "brn": lambda **k: nkn.BatchRenorm1d(3, **k),
    "gbn": lambda **k: nkn.GhostBatchNorm1d(3, virtual_batch_size=4, **k),
    "bnact": lambda **k: nkn.BatchNormAct2d(3, **k),
    "keras": lambda **k: nkn.BatchNormalization(axis=1, num_features=3, **k),
    "syncbn-local": lambda **k: nkn.SyncBatchNorm(3, **k),
}


@pytest.mark.filterwarnings("ignore:SyncBatchNorm. torch.distributed is not initialized")
@pytest.mark.parametrize("name", sorted(_NAN_LAYERS))
def test_nan_policy_protects_running_statistics(name: str):
    shape = (8, 3, 2, 2) if name == "bnact" else (8, 3)
    m = _NAN_LAYERS[name]()
    assert m.nan_policy == "skip"  # the documented default
    m(torch.randn(shape))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = torch.randn(shape)
    bad[:, 0] = float("nan")  # in every virtual batch too (GhostBN skips per virtual batch)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        m(bad)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} moved on a NaN batch"
    with pytest.raises(FloatingPointError):
        _NAN_LAYERS[name](nan_policy="raise")(bad)
    poisoned = _NAN_LAYERS[name](nan_policy="propagate")
    poisoned(bad)
    assert torch.isnan(poisoned.running_mean).any()
