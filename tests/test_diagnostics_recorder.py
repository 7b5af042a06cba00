"""The recorder's mechanics: values of later steps against float64 oracles, layouts, outputs
changed in place after their layer, caller hooks, the ``record`` groups and their hooks, steps
that change shape or skip layers, shared layers, and a recorded step that leaves no
garbage-collected objects behind."""

from __future__ import annotations

import copy
import gc
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normkit.diagnostics import METRICS, Recorder, _recorder, watch


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.sig = nn.Sigmoid()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 10)
        self.tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv(x)))
        return self.tanh(self.fc(self.flat(self.sig(self.conv2(h)))))


def _assert_same_series(a: Recorder, b: Recorder, *, rtol: float, atol: float) -> None:
    """Both recorders hold the same layers and values (NaN equal to NaN) for every metric."""
    for metric in METRICS:
        sa, sb = a.series(metric), b.series(metric)
        assert sa.keys() == sb.keys(), metric
        for layer in sa:
            np.testing.assert_allclose(sa[layer], sb[layer], rtol=rtol, atol=atol, err_msg=metric)


def _train(model: nn.Module, steps: int, channels_last: bool = False, **kw) -> Recorder:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    with watch(model, every=1, **kw) as rec:
        for _ in range(steps):
            x = torch.randn(5, 3, 6, 6, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), torch.arange(5) % 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return rec


def test_a_channels_last_model_records_what_its_contiguous_twin_records() -> None:
    torch.manual_seed(0)
    model = _Net()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    a, b = _train(model, 4), _train(twin, 4, channels_last=True)
    assert a.layers == b.layers and a.steps == b.steps == [0, 1, 2, 3]
    _assert_same_series(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernels", ["numba", "numba per parameter", "numba parallel", "torch"])
def test_values_of_a_later_step_match_oracles(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normkit.diagnostics import _updates

    if kernels == "torch":  # the update statistics without the Numba kernels
        monkeypatch.setattr(_updates, "kernels", lambda: None)
    elif _updates.kernels() is None:
        pytest.skip("numba is not installed")
    elif kernels.startswith("numba p"):  # (the large-model path: a kernel call each)
        monkeypatch.setattr(_updates, "_ONE_CALL", 0)
        if kernels == "numba parallel":  # (every parameter on the worker threads)
            from normkit.backends.numba import _runtime

            monkeypatch.setattr(_runtime, "SERIAL_NUMEL", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 6), nn.Sigmoid())
    with torch.no_grad():
        model[0].bias[:4] = -1e3  # exactly 4 of 16 ReLU units dead
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs = torch.randn(3, 20, 12, generator=torch.Generator().manual_seed(1))
    w_start = [p.detach().double().clone() for p in model[0].parameters()]
    with watch(model, every=1) as rec:
        for i in range(3):
            if i == 2:  # oracles of the last step, before it runs (no hooks fire in no_grad)
                with torch.no_grad():
                    y0 = model[0](xs[i]).double()
                    out = model(xs[i]).double()
                w_before = [p.detach().double().clone() for p in model[0].parameters()]
            y = model(xs[i])
            opt.zero_grad()
            y.square().sum().backward()
            grads = [p.grad.double().clone() for p in model[0].parameters()]
            opt.step()
    r = {m: {k: v[-1] for k, v in rec.series(m).items()} for m in METRICS}
    assert r["act_mean"]["0"] == pytest.approx(y0.mean().item(), rel=1e-5, abs=1e-6)
    assert r["act_std"]["0"] == pytest.approx(y0.std(correction=0).item(), rel=1e-5)
    assert r["act_min"]["0"] == y0.min().item() and r["act_max"]["0"] == y0.max().item()
    assert r["dead_frac"]["1"] == 4 / 16
    sat = ((out < 0.01) | (out > 0.99)).double().mean().item()
    assert r["saturated_frac"]["3"] == pytest.approx(sat)
    assert r["grad_out_norm"]["3"] == pytest.approx((2 * out).norm().item(), rel=1e-5)
    g0 = math.sqrt(sum(g.square().sum().item() for g in grads))
    w0 = math.sqrt(sum(w.square().sum().item() for w in w_before))
    assert r["grad_norm"]["0"] == pytest.approx(g0, rel=1e-5)
    assert r["weight_norm"]["0"] == pytest.approx(w0, rel=1e-5)
    assert r["update_ratio"]["0"] == pytest.approx(0.05 * g0 / w0, rel=1e-4)
    moved = [w - s for w, s in zip(w_before, w_start, strict=True)]
    d0 = math.sqrt(sum(d.square().sum().item() for d in moved))
    s0 = math.sqrt(sum(s.square().sum().item() for s in w_start))
    assert r["init_distance"]["0"] == pytest.approx(d0 / s0, rel=1e-5)


class _LateInPlace(nn.Module):
    """From its third call on, the output of ``lin`` is changed in place after ``lin`` ran."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.lin(x)
        if self.calls >= 3:
            y = y.mul_(2)
        return y


def test_an_output_changed_in_place_later_is_measured_as_its_layer_made_it() -> None:
    torch.manual_seed(0)
    model = _LateInPlace()
    xs = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(2))
    with watch(model, every=1) as rec:
        for x in xs:
            model(x).sum().backward()
    with torch.no_grad():
        want = [model.lin(x).mean().item() for x in xs]
    np.testing.assert_allclose(rec.series("act_mean")["lin"], want, rtol=1e-5)
    # the gradient w.r.t. lin's output is the one before the ×2: d(sum(2y))/dy = 2 from step 2
    grads = rec.series("grad_out_norm")["lin"]
    np.testing.assert_allclose(grads, [4.0 * math.sqrt(2)] * 2 + [8.0 * math.sqrt(2)] * 3)


def test_a_recorded_step_leaves_no_tracked_objects_behind() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 1, 6, 6)

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    with watch(model, every=1) as rec:
        for _ in range(5):
            step()
        rec.recording()
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(200):
            step()
        rec.recording()  # (converts the pending measurements to the stored columns)
        gc.collect()
        grown = len(gc.get_objects()) - before
    assert grown < 50, f"{grown} objects kept by 200 recorded steps"


def test_pending_measurements_are_bounded_and_converted_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(bound: int) -> tuple[int, list[dict[str, object]]]:
        monkeypatch.setattr(_recorder, "MAX_PENDING", bound)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        most = 0
        with watch(model, every=1) as rec:
            for _ in range(30):
                opt.zero_grad()
                model(torch.randn(8, 3)).square().mean().backward()
                opt.step()
                most = max(most, rec._store.pending)
        return most, rec.rows()

    most, rows = run(20)
    # a step adds 4 outputs, 1 norm, 4 output gradients, 6 parameter gradients, 1 update
    assert 20 < most <= 20 + 16, most
    unbounded, rows_at_the_end = run(1 << 30)
    assert unbounded == 30 * 16
    assert rows == rows_at_the_end


def test_caller_tensor_hooks_on_layer_outputs_still_fire_with_their_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    seen: dict[str, torch.Tensor] = {}

    def caller_hook(m: nn.Module, a: object, out: torch.Tensor) -> None:
        out.register_hook(lambda g: seen.__setitem__("hidden", g))

    # a hook the caller puts on the hidden output before the recorder's (its own forward hook)
    model[1].register_forward_hook(caller_hook)
    x = torch.randn(4, 6)
    with watch(model, every=1) as rec:
        for _ in range(3):
            y = model(x)
            handle = y.register_hook(lambda g: seen.__setitem__("out", g))  # after the forward
            (y * y).sum().backward()
            handle.remove()
    torch.testing.assert_close(seen["out"], 2 * y.detach())
    w = model[2].weight.detach()
    torch.testing.assert_close(seen["hidden"], (2 * y.detach()) @ w)
    norms = rec.series("grad_out_norm")
    assert norms["2"][-1] == pytest.approx((2 * y).norm().item(), rel=1e-5)
    assert norms["1"][-1] == pytest.approx(((2 * y.detach()) @ w).norm().item(), rel=1e-5)


def test_record_picks_the_metric_groups_and_their_hooks() -> None:
    from normkit.diagnostics import NORM_METRICS, RECORD

    torch.manual_seed(0)
    base = _Net()
    full = _train(copy.deepcopy(base), 3)
    groups = {
        "activations": {
            "act_mean",
            "act_std",
            "act_min",
            "act_max",
            "dead_frac",
            "saturated_frac",
            *NORM_METRICS,
        },
        "gradients": {"grad_out_norm", "grad_norm"},
        "updates": {"weight_norm", "update_ratio", "init_distance"},
    }
    assert set(RECORD) == set(groups)
    assert set().union(*groups.values()) == set(METRICS)
    leaves = ["conv", "bn", "relu", "conv2", "sig", "fc", "tanh"]  # (not the Flatten)
    for record in [("gradients",), ("updates",), ("activations", "updates")]:
        model = copy.deepcopy(base)
        hooked: list[list[str]] = []  # modules with forward hooks, seen from inside a forward
        model.tanh.register_forward_pre_hook(
            lambda m, a, root=model, seen=hooked: seen.append(
                [n for n, x in root.named_modules() if x._forward_hooks]
            )
        )
        rec = _train(model, 3, record=record)
        assert rec.record == tuple(r for r in RECORD if r in record)
        assert hooked[0] == ([""] if record == ("updates",) else ["", *leaves])
        wanted = set().union(*(groups[r] for r in record))
        for metric in METRICS:
            got = rec.series(metric)
            if metric in wanted:  # the same values as the full recorder's
                assert got.keys() == full.series(metric).keys(), metric
                for layer, vals in got.items():
                    np.testing.assert_allclose(vals, full.series(metric)[layer], rtol=2e-5)
            else:
                assert got == {}, metric
    with pytest.raises(ValueError, match="record must name one or more of"):
        watch(nn.Linear(2, 2), record=("activation",))
    with pytest.raises(ValueError, match="record must name one or more of"):
        watch(nn.Linear(2, 2), record=())


class _Shifting(nn.Module):
    """conv → bn → relu → [conv2 → sigmoid, skipped when ``skip``] → pool → fc; the caller also
    changes the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.sig = nn.Sigmoid()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)
        self.skip = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv(x)))
        if not self.skip:
            h = self.sig(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


def test_steps_that_change_the_batch_or_skip_layers_record_each_steps_values() -> None:
    batches = [5, 5, 5, 7, 7, 5, 5, 5, 5, 5]
    skips = {5, 6}  # conv2 and sigmoid not called
    torch.manual_seed(0)
    model = _Shifting()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    want: dict[str, list[float]] = {"conv": []}
    with watch(model, every=1) as rec:
        for step, n in enumerate(batches):
            model.skip = step in skips
            x = torch.randn(n, 3, 5, 5, generator=g)
            with torch.no_grad():  # (a submodule's call: not a step, no recorder hook fires)
                want["conv"].append(model.conv(x).mean().item())
            loss = F.cross_entropy(model(x), torch.arange(n) % 10)
            opt.zero_grad()  # (set to None: conv2 has no gradient when skipped)
            loss.backward()
            opt.step()
    assert rec.steps == list(range(len(batches)))
    assert rec.layers == ["conv", "bn", "relu", "conv2", "sig", "pool", "fc"]
    np.testing.assert_allclose(rec.series("act_mean")["conv"], want["conv"], rtol=1e-5, atol=1e-7)
    grads = rec.series("grad_norm")
    assert math.isnan(grads["conv2"][5]) and not math.isnan(grads["conv2"][7])
    sig = rec.series("act_mean")["sig"]
    assert [math.isnan(v) for v in sig] == [s in skips for s in range(len(batches))]


class _Shared(nn.Module):
    """One Linear called twice per forward (layers ``lin`` and ``lin#2``), a tanh between."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.tanh = nn.Tanh()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tanh(self.lin(self.tanh(self.lin(x)))))


@pytest.mark.parametrize("every", [1, 3])
def test_a_shared_layer_is_recorded_per_call_at_every_kth_step(every: int) -> None:
    torch.manual_seed(0)
    model = _Shared()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    want: dict[int, tuple[float, float]] = {}
    with watch(model, every=every) as rec:
        for step in range(10):
            x = torch.randn(5, 6, generator=g)
            with torch.no_grad():
                first = model.lin(x)
                want[step] = (first.max().item(), model.lin(model.tanh(first)).max().item())
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert rec.steps == list(range(0, 10, every))
    assert rec.layers[:3] == ["lin", "tanh", "lin#2"]
    maxima = rec.series("act_max")
    for i, step in enumerate(rec.steps):
        assert (maxima["lin"][i], maxima["lin#2"][i]) == pytest.approx(want[step], rel=1e-6)
    assert "lin#2" not in rec.series("grad_norm")  # (parameters belong to the module: "lin")


def test_reading_midway_does_not_change_what_is_read() -> None:
    torch.manual_seed(0)
    base = _Shifting()
    recs = []
    for read_midway in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(5)
        with watch(model, every=1) as rec:
            for step in range(6):
                model.skip = step == 3
                loss = F.cross_entropy(model(torch.randn(4, 3, 5, 5, generator=g)), torch.arange(4))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if read_midway and step == 2:
                    assert rec.series("act_std")
        recs.append(rec)
    _assert_same_series(recs[0], recs[1], rtol=0, atol=0)  # (NaN where not recorded)
