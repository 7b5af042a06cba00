"""normkit.diagnostics.watch / Recorder / verdict: recorded values against independent oracles
(torch's own grads and reductions in float64, analytic fractions), vanishing/exploding detection
on nets whose behaviour is known analytically, hook hygiene and bit-identity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

import normkit.nn as nkn
from normkit.diagnostics import METRICS, Finding, Recorder, watch


def _codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def deep_mlp(depth: int = 30, *, act: type[nn.Module] = nn.Sigmoid, bn: bool = False) -> nn.Module:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        layers.append(nn.Linear(d, 32))
        if bn:
            layers.append(nn.BatchNorm1d(32))
        layers.append(act())
        d = 32
    layers.append(nn.Linear(32, 10))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """x + relu(W x) with He init scaled down so the residual stream stays bounded over depth."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.ReLU()
        nn.init.kaiming_normal_(self.lin.weight)
        with torch.no_grad():
            self.lin.weight.mul_(1 / math.sqrt(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.lin(x))


def residual_mlp(depth: int = 30) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 32), *[ResidualBlock(32, depth) for _ in range(depth)], nn.Linear(32, 10)
    )


class BasicBlock(nn.Module):
    def __init__(self, c: int, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = norm(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = norm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def small_resnet(norm: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        norm(16),
        nn.ReLU(),
        BasicBlock(16, norm),
        BasicBlock(16, norm),
        BasicBlock(16, norm),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,
    batch: int = 64,
    rec_every: int | None = 1,
) -> Recorder | None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def loop() -> None:
        for i in range(steps):
            j = (i * batch) % (len(x) - batch)
            loss = F.cross_entropy(model(x[j : j + batch]), y[j : j + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()

    if rec_every is None:
        loop()
        return None
    with watch(model, every=rec_every) as rec:
        loop()
    return rec


def random_data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------- vanishing / exploding


def test_deep_sigmoid_mlp_reports_vanishing() -> None:
    torch.manual_seed(0)
    rec = train(deep_mlp(30), *random_data(), steps=3, batch=32)
    assert rec is not None
    vanishing = [f for f in rec.verdict() if f.code == "vanishing-gradients"]
    assert len(vanishing) == 1
    f = vanishing[0]
    assert f.severity == "error" and f.value is not None and f.value < 1e-3
    assert f.layer == "0"  # the first layer (input side)
    # the ratio is the independent oracle's: grad w.r.t. the outputs of the first and last linear
    g = rec.series("grad_out_norm", ["0", "60"])
    assert f.value == pytest.approx(sorted(g["0"])[1] / sorted(g["60"])[1], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("fixed", ["bn", "residual"])
def test_fixed_twins_report_no_vanishing(fixed: str) -> None:
    torch.manual_seed(0)
    model = deep_mlp(30, bn=True) if fixed == "bn" else residual_mlp(30)
    rec = train(model, *random_data(), steps=3, batch=32)
    assert rec is not None
    codes = _codes(rec.verdict())
    assert "vanishing-gradients" not in codes and "exploding-gradients" not in codes


def test_large_init_reports_exploding() -> None:
    torch.manual_seed(0)
    model = deep_mlp(20, act=nn.ReLU)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=2 * math.sqrt(2 / m.in_features))  # gain 2 per layer
    rec = train(model, *random_data(), steps=1, lr=0.0)
    assert rec is not None
    exploding = [f for f in rec.verdict() if f.code == "exploding-gradients"]
    assert exploding and exploding[0].severity == "error"
    assert exploding[0].value is not None and exploding[0].value > 1e4  # ≈ 2^19 analytically


def test_nan_is_reported_with_the_first_layer_producing_it() -> None:
    torch.manual_seed(0)
    model = deep_mlp(4, act=nn.ReLU)
    with torch.no_grad():
        model[4].weight[0, 0] = math.inf  # third Linear
    rec = train(model, *random_data(), steps=1)
    assert rec is not None
    by_code = {f.code: f for f in rec.verdict()}
    assert by_code["nonfinite-activations"].layer == "4"
    assert by_code["nonfinite-activations"].step == 0
    assert by_code["exploding-gradients"].severity == "error"


def test_clean_resnet_has_no_findings(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    rec = train(small_resnet(), *digits, steps=10, lr=0.1, batch=32)
    assert rec is not None
    assert rec.verdict() == []


def test_dead_relu_and_saturation_are_reported_and_not_on_healthy_twin() -> None:
    torch.manual_seed(0)
    x, y = random_data()
    dead = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sat = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10))
    with torch.no_grad():
        dead[0].bias[:24] = -100.0  # 24 of 32 units can never fire: 75 % dead
        sat[0].weight.mul_(100.0)  # pre-activations ~ ±50: sigmoid saturated nearly everywhere
    healthy = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    rd, rs, rh = (train(m, x, y, steps=2) for m in (dead, sat, healthy))
    assert rd is not None and rs is not None and rh is not None
    fd = {f.code: f for f in rd.verdict()}["dead-relu"]
    assert fd.layer == "1" and fd.value == pytest.approx(24 / 32, abs=1 / 32)
    fs = {f.code: f for f in rs.verdict()}["saturated-units"]
    assert fs.layer == "1" and fs.value is not None and fs.value > 0.9
    assert rh.verdict() == []


# ----------------------------------------------------------------------- recorded values


def test_recorded_values_match_independent_oracles() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model[0].bias[:8] = -1e3  # exactly 8 of 32 ReLU units dead
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with watch(model) as rec:
        out = model(x)
        hidden = model[1](model[0](x)).detach().double()  # oracle activations (no hooks fire)
        y0 = model[0](x).detach().double()
        out.square().sum().backward()
        grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}
        w_before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        opt.step()
    assert rec.steps == [0]
    r = {m: {k: v[0] for k, v in rec.series(m).items()} for m in METRICS}
    assert r["act_mean"]["0"] == pytest.approx(y0.mean().item(), rel=1e-5, abs=1e-6)
    assert r["act_std"]["0"] == pytest.approx(y0.std(correction=0).item(), rel=1e-5)
    assert r["act_min"]["0"] == pytest.approx(y0.min().item(), rel=1e-6)
    assert r["act_max"]["1"] == pytest.approx(hidden.max().item(), rel=1e-6)
    assert r["dead_frac"]["1"] == 8 / 32
    t = out.detach().double()
    assert r["saturated_frac"]["3"] == pytest.approx((t.abs() > 0.99).double().mean().item())
    # grad w.r.t. the Tanh output of sum(y²) is 2y
    assert r["grad_out_norm"]["3"] == pytest.approx((2 * t).norm().item(), rel=1e-5)
    g0 = math.sqrt(grads["0.weight"].square().sum().item() + grads["0.bias"].square().sum().item())
    assert r["grad_norm"]["0"] == pytest.approx(g0, rel=1e-5)
    w0 = math.sqrt(sum(w_before[f"0.{p}"].square().sum().item() for p in ("weight", "bias")))
    assert r["weight_norm"]["0"] == pytest.approx(w0, rel=1e-5)
    assert r["update_ratio"]["0"] == pytest.approx(lr * g0 / w0, rel=1e-4)  # SGD: Δw = −lr·g
    assert "0" not in rec.series("dead_frac")  # dead units are only counted for ReLU layers


def test_every_counts_training_forwards_only() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(8, 4)
    with watch(model, every=3) as rec:
        for _ in range(7):
            model(x).sum().backward()
        model.eval()
        model(x)  # eval forwards are not steps
        model.train()
        with torch.no_grad():
            model(x)  # neither are no_grad ones
        model(x).sum().backward()  # step 7
    assert rec.steps == [0, 3, 6]
    assert rec.layers == ["0", "1"]
    assert len(rec.series("grad_norm")["0"]) == 3


def test_module_called_twice_gets_two_entries() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.lin(self.act(x)))

    model = Twice()
    with watch(model) as rec:
        model(-torch.ones(2, 4)).sum().backward()
    assert rec.layers == ["act", "lin", "act#2"]
    assert rec.series("dead_frac")["act"] == [1.0]


# ----------------------------------------------------------------------- hygiene


def _hook_count(model: nn.Module) -> int:
    n = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    n += sum(len(p._backward_hooks or {}) for p in model.parameters())
    return n + len(_global_optimizer_pre_hooks) + len(_global_optimizer_post_hooks)


@pytest.mark.parametrize("every", [1, 2])
def test_hooks_are_removed_on_exit_even_after_an_error(every: int) -> None:
    model = small_resnet()
    before = _hook_count(model)
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(RuntimeError, match="boom"), watch(model, every=every) as rec:
        for _ in range(3):
            model(x).sum().backward()
            assert _hook_count(model) > before
        raise RuntimeError("boom")
    assert not rec.attached
    assert _hook_count(model) == before
    model(x).sum().backward()  # still trains, nothing recorded any more
    assert rec.steps == ([0, 1, 2] if every == 1 else [0, 2])


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, nkn.BatchNorm2d])
def test_watched_model_is_bit_identical(
    norm: type[nn.Module], digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    a = small_resnet(norm)  # has ReLU(inplace=True) right after hooked layers
    b = copy.deepcopy(a)
    x, y = digits
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    with watch(b, every=1):
        for i in range(3):
            xb, yb = x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]
            outs = []
            for m, opt in ((a, oa), (b, ob)):
                xi = xb.clone().requires_grad_()
                out = m(xi)
                opt.zero_grad()
                F.cross_entropy(out, yb).backward()
                outs.append((out.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]))
                opt.step()
            (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = outs
            assert torch.equal(out_a, out_b)
            assert torch.equal(gx_a, gx_b)
            assert all(torch.equal(p, q) for p, q in zip(gp_a, gp_b, strict=True))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_bad_arguments_say_the_fix() -> None:
    with pytest.raises(ValueError, match="every must be a positive int"):
        watch(nn.Linear(2, 2), every=0)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        watch(torch.zeros(2))  # type: ignore[arg-type]
    rec = watch(nn.Linear(2, 2))
    rec.close()
    with pytest.raises(ValueError, match="unknown metric"):
        rec.series("nope")
    with pytest.raises(TypeError, match="unknown threshold"):
        rec.verdict(nope=1.0)


def test_activation_drift_is_reported_and_not_when_a_norm_follows() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 8)

    def run(model: nn.Module) -> list[Finding]:
        with watch(model, every=1) as rec:
            for i in range(3):
                with torch.no_grad():  # the first layer's output scale grows ×100 in 3 steps
                    for p in model[0].parameters():
                        p.mul_(1.0 if i == 0 else 10.0)
                model(x).sum().backward()
        return [f for f in rec.verdict() if f.code == "activation-drift"]

    plain = run(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)))
    assert len(plain) == 1 and plain[0].layer == "0"
    assert plain[0].value == pytest.approx(100.0, rel=1e-3)  # std is linear in the weight scale
    assert run(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))) == []


def test_output_gradient_is_the_one_before_a_later_in_place_op() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(inplace=True), nn.Linear(5, 3)
    )
    twin = copy.deepcopy(model)
    twin[2] = nn.ReLU()  # oracle: the same net without the in-place op
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(2))
    y = twin[1](twin[0](x))
    y.retain_grad()
    twin[3](twin[2](y)).square().sum().backward()
    with watch(model) as rec:
        model(x).square().sum().backward()
    assert rec.recorded("grad_out_norm", "1")[0] == pytest.approx(y.grad.norm().item(), rel=1e-5)
    assert rec.recorded("act_min", "1")[0] == pytest.approx(y.min().item(), rel=1e-6)
