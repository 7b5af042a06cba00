"""The instruments of normkit.diagnostics against analytic values on models where they are
known: distance from initialization under constant-gradient SGD, gradient signal-to-noise of a
model whose per-sample gradients are closed-form, the top Hessian eigenvalue of least squares
and of a small BN net (full Hessian by torch.autograd.functional), batch-norm health from a
batch with set moments; and the verdicts they drive."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from normkit.diagnostics import gradient_noise, top_hessian_eigenvalue, watch


def _codes(findings: list) -> set[str]:
    return {f.code for f in findings}


# ----------------------------------------------------------------------- distance from init


def test_distance_from_init_and_update_ratio_under_constant_gradient_sgd() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False)
    w0 = model.weight.detach().double().clone()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    g = x.double().sum(0)  # d(sum(x w))/dw, the same at every step
    lr = 0.03
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with watch(model, every=2) as rec:
        for _ in range(7):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
    assert rec.steps == [0, 2, 4, 6]
    # before step s: w_s = w₀ − s·lr·g, so ‖w_s − w₀‖/‖w₀‖ = s·lr·‖g‖/‖w₀‖
    want = [s * lr * g.norm().item() / w0.norm().item() for s in rec.steps]
    np.testing.assert_allclose(rec.series("init_distance")[""], want, rtol=1e-5, atol=1e-7)
    ratio = [lr * g.norm().item() / (w0 - s * lr * g).norm().item() for s in rec.steps]
    np.testing.assert_allclose(rec.series("update_ratio")[""], ratio, rtol=1e-5)


# ----------------------------------------------------------------------- gradient noise


class _Bias(nn.Module):
    """``out_i = b`` for every sample: with loss ½‖out_i − t_i‖² the per-sample gradient is
    exactly b − t_i."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b.expand(len(x), -1)


def _half_sq(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - t).square().sum(1).mean()


@pytest.mark.parametrize("groups", [4, 32])
def test_gradient_noise_of_a_model_with_closed_form_per_sample_gradients(groups: int) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(32, 5, generator=g, dtype=torch.float64) * 2 + 0.3
    model = _Bias(5)
    with torch.no_grad():
        model.b.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0]))
    n, m, per_layer, snr, scale = gradient_noise(model, _half_sq, (t, t), groups=groups)
    assert (n, m) == (32, groups)
    # micro-batch gradients b − mean(t of the group), their mean b − t̄ and variance S
    b = model.b.detach().numpy()
    gs = np.stack([b - c.mean(0) for c in np.array_split(t.numpy(), groups)])
    mean = gs.mean(0)
    s = ((gs - mean) ** 2).sum() / (groups - 1)
    signal = (mean**2).sum() - s / groups
    assert snr == pytest.approx(signal / (s / groups), rel=1e-9)
    assert per_layer == {"b": pytest.approx(snr, rel=1e-12)}
    assert scale == pytest.approx((32 / groups) * s / signal, rel=1e-9)
    if groups == 32:  # per-sample: S is the sample variance of t, summed over the dimensions
        assert s == pytest.approx(t.numpy().var(0, ddof=1).sum(), rel=1e-12)


def test_batch_too_small_is_reported_when_noise_dominates_and_not_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(16, 5, generator=g, dtype=torch.float64)
    for offset, expected in ((0.0, True), (10.0, False)):
        model = _Bias(5)
        with torch.no_grad():
            model.b.copy_(t.mean(0) + offset)  # at the optimum: the gradient is all noise
        with watch(model, every=1) as rec:
            found = rec.gradient_noise(_half_sq, (t, t), groups=16)
        hits = [f for f in rec.verdict() if f.code == "batch-too-small"]
        assert bool(hits) is expected, found
        if hits:
            assert hits[0].value == pytest.approx(found.total_snr) and found.total_snr < 1
    with pytest.raises(ValueError, match="groups must be an int in"):
        gradient_noise(model, _half_sq, (t, t), groups=1)
    with pytest.raises(TypeError, match="pair"):
        gradient_noise(model, _half_sq, t)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- curvature


def test_top_eigenvalue_of_least_squares_is_that_of_2_xtx_over_n() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64) @ torch.diag(
        torch.tensor([3.0, 1.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    )
    y = torch.randn(64, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    lam, iters = top_hessian_eigenvalue(model, F.mse_loss, (x, y), iters=200, tol=1e-12)
    want = np.linalg.eigvalsh(2 * x.T.numpy() @ x.numpy() / 64).max()
    assert lam == pytest.approx(want, rel=1e-8) and iters < 200


def test_curvature_of_a_bn_net_matches_its_full_hessian_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(v: torch.Tensor) -> torch.Tensor:
        ps, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            ps[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return F.mse_loss(functional_call(model, (ps, buffers), (x,)), y)

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with watch(model, every=1) as rec:
        F.mse_loss(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        state = copy.deepcopy(model.state_dict())
        c = rec.curvature(F.mse_loss, (x, y), iters=500, tol=1e-12)
    assert rec.steps == [0]  # the instrument's forwards are not training steps
    assert all(
        torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values(), strict=True)
    )
    assert all(torch.equal(p.grad, q) for p, q in zip(model.parameters(), grads, strict=True))
    # the oracle: all eigenvalues of the full Hessian at the weights after the step
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    eig = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())
    want = eig[np.abs(eig).argmax()]
    assert c.eigenvalue == pytest.approx(want, rel=1e-6)
    assert (c.lr, c.momentum) == (0.1, 0.9)
    assert c.bound == pytest.approx(2 * 1.9 / abs(want), rel=1e-6)


@pytest.mark.parametrize(("lr", "expected"), [(0.05, None), (0.12, "warning"), (0.3, "error")])
def test_lr_above_the_curvature_bound_is_reported(lr: float, expected: str | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0]).double()
    y = torch.randn(32, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    lam = np.linalg.eigvalsh(2 * x.T.numpy() @ x.numpy() / 32).max()  # ≈ 18: bound 2/λ ≈ 0.11
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with watch(model, every=1) as rec:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        c = rec.curvature(F.mse_loss, (x, y), iters=300, tol=1e-12)
    assert c.bound == pytest.approx(2 / lam, rel=1e-6) and c.lr == lr
    hits = [f for f in rec.verdict() if f.code == "lr-above-curvature-bound"]
    assert [f.severity for f in hits] == ([] if expected is None else [expected])
    if hits:
        assert hits[0].value == pytest.approx(lr * lam / 2, rel=1e-6)


# ----------------------------------------------------------------------- normalization health


def test_bn_health_against_a_batch_with_set_moments() -> None:
    c, eps = 4, 1e-5
    bn = nn.BatchNorm2d(c, eps=eps)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([0.0, 1.5, -2.0, 1.0]))  # channel 0: γ = 0, dead
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, c, 5, 5, generator=g, dtype=torch.float64)
    z = (z - z.mean((0, 2, 3), keepdim=True)) / z.std((0, 2, 3), correction=0, keepdim=True)
    mu = torch.tensor([0.5, 1.0, 0.0, 3.0], dtype=torch.float64)
    sd = torch.tensor([2.0, 2.0, 1.0, 0.0], dtype=torch.float64)  # channel 3: constant, dead
    x = (z * sd.view(1, c, 1, 1) + mu.view(1, c, 1, 1)).float()
    rm, rv = bn.running_mean.double().clone(), bn.running_var.double().clone()
    model = nn.Sequential(bn)
    with watch(model, every=1) as rec:
        out = model(x)
    sb, sr = (sd**2 + eps).sqrt(), (rv + eps).sqrt()
    lag = (((sb / sr - 1) ** 2 + ((mu - rm) / sr) ** 2).mean()).sqrt().item()
    r = {
        m: rec.recorded(m, "0")[0]
        for m in (
            "bn_stat_lag",
            "bn_dead_frac",
            "gamma_min",
            "gamma_max",
            "norm_in_rms",
            "norm_out_rms",
        )
    }
    assert r["bn_stat_lag"] == pytest.approx(lag, rel=1e-4)
    assert r["bn_dead_frac"] == 2 / 4
    assert (r["gamma_min"], r["gamma_max"]) == (-2.0, 1.5)
    assert r["norm_in_rms"] == pytest.approx(x.double().square().mean().sqrt().item(), rel=1e-5)
    assert r["norm_out_rms"] == pytest.approx(out.double().square().mean().sqrt().item(), rel=1e-5)
    assert rec.recording().norm_layers == ["0"] and rec.info("0").norm == "batch"


def test_layer_norm_gets_its_scales_and_gamma_range_but_no_bn_metrics() -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(6.0))
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    with watch(model, every=1) as rec:
        out = model(x)
    h = model[0](x).detach()
    assert rec.recorded("norm_in_rms", "1")[0] == pytest.approx(
        h.square().mean().sqrt().item(), rel=1e-5
    )
    assert rec.recorded("norm_out_rms", "1")[0] == pytest.approx(
        out.detach().square().mean().sqrt().item(), rel=1e-5
    )
    assert (rec.recorded("gamma_min", "1")[0], rec.recorded("gamma_max", "1")[0]) == (0.0, 5.0)
    assert rec.recorded("bn_stat_lag", "1") == {} and rec.info("1").norm == "norm"


def test_lagging_running_statistics_are_reported_and_not_on_stationary_data() -> None:
    def run(drift: float) -> list:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=0.5), nn.Linear(4, 2))
        g = torch.Generator().manual_seed(1)
        with watch(model, every=1) as rec:
            for step in range(16):  # (the average of momentum 0.5 warms up in 6 steps)
                x = torch.randn(256, 4, generator=g) * drift**step + step * (drift - 1)
                model(x).square().mean().backward()
        return [f for f in rec.verdict() if f.code == "bn-running-stats-lag"]

    assert run(1.0) == []
    hits = run(2.0)  # the input scale doubles every step: the running variance lags behind
    assert len(hits) == 1 and hits[0].layer == "1" and hits[0].value is not None
    assert hits[0].value > 0.3 and "recalibrate_batchnorm" in hits[0].fix
