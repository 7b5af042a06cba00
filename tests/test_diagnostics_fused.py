"""The recorder's CPU fast path (one numba call for the statistics of many tensors): the kernel
against float64 NumPy, the recorded values of fast-path steps against torch-path twins and
analytic oracles, the fallback when a layer's output is changed in place, and a recorded step
that leaves no garbage-collected objects behind."""

from __future__ import annotations

import copy
import gc
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normkit.diagnostics import METRICS, watch
from normkit.diagnostics import _recorder as R

pytest.importorskip("numba")

_MODES = {"moments": 0, "relu": 1, "sigmoid": 2, "tanh": 3}


def _oracle(x: torch.Tensor, mode: str) -> list[float]:
    a = x.detach().double().numpy()
    count = 0.0
    if mode == "relu":
        units = a.reshape(a.shape[0], a.shape[1], -1) if a.ndim >= 2 else a.reshape(1, -1, 1)
        count = float(((units > 0) | np.isnan(units)).any(axis=(0, 2)).sum())
    elif mode == "sigmoid":
        count = float(((a < 0.01) | (a > 0.99)).sum())
    elif mode == "tanh":
        count = float((np.abs(a) > 0.99).sum())
    lo, hi = (np.nan, np.nan) if np.isnan(a).any() else (a.min(), a.max())
    return [a.sum(), (a * a).sum(), lo, hi, count]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    mode=st.sampled_from(list(_MODES)),
    channels_last=st.booleans(),
    special=st.sampled_from([None, math.nan, math.inf, -math.inf, 0.0]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_float64_numpy(shape, dtype, mode, channels_last, special, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype) * 3
    if mode == "relu":
        x = x.relu()
        if x.ndim >= 2:
            x[:, 0] = 0  # a dead channel
    elif mode == "sigmoid":
        x = x.sigmoid()
    elif mode == "tanh":
        x = x.tanh()
    if special is not None:
        x.view(-1)[seed % x.numel()] = special
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    row = R._fused_row(x, _MODES[mode])
    assert row is not None
    got = R._run_fused([row])[0].tolist()
    want = _oracle(x, mode)
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got[:2], want[:2], rtol=tol, atol=tol)
    np.testing.assert_array_equal(got[2:4], want[2:4])  # min/max are exact
    assert got[4] == want[4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "values",
    [
        [-3.0, -0.5, -2.0],  # all negative: the max is the one nearest 0
        [0.5, 2.0, 3.0],  # all positive
        [-0.0, 1.0],
        [0.0, -0.0],
        [-0.0],
        [-math.inf, math.inf],  # Σx is NaN without a NaN value
        [-math.inf, -1.0],
        [1.0, math.inf],
        [-1e-45, 1e-45],  # subnormals (float32's smallest)
        [2.0, math.nan, -1.0],
        [-math.nan, -1.0],  # a NaN with the sign bit set
    ],
)
def test_kernel_min_max_of_sign_and_special_cases_match_torch_aminmax(values, dtype) -> None:
    x = torch.tensor(values, dtype=dtype)
    got = R._run_fused([R._fused_row(x, 0)])[0]
    lo, hi = torch.aminmax(x)
    for g, w in ((got[2], lo.item()), (got[3], hi.item())):  # (±0 equal: torch picks either)
        assert (math.isnan(g) and math.isnan(w)) or g == w


def test_rows_decline_what_the_kernel_cannot_read() -> None:
    assert R._fused_row(torch.randn(4, 4).t(), 0) is None  # not dense in a known layout
    assert R._fused_row(torch.randn(4, 4, dtype=torch.float16), 0) is None
    assert R._fused_row(torch.empty(0, 3), 0) is None
    assert R._fused_row(torch.randn(4, 4).to_sparse(), 0) is None
    assert R._flat_row(torch.randn(4, 4).t(), R._SUMSQ) is None
    nested = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=torch.jagged)
    assert R._fused_row(nested, 0) is None and R._flat_row(nested, R._SUMSQ) is None
    big = torch.empty(R.FUSED_MAX_NUMEL + 1)
    assert R._fused_row(big, 0) is None and R._flat_row(big, R._SUMSQ) is None


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


def _assert_same_series(a: R.Recorder, b: R.Recorder, *, rtol: float, atol: float) -> None:
    """Both recorders hold the same layers and values (NaN equal to NaN) for every metric."""
    for metric in METRICS:
        sa, sb = a.series(metric), b.series(metric)
        assert sa.keys() == sb.keys(), metric
        for layer in sa:
            np.testing.assert_allclose(sa[layer], sb[layer], rtol=rtol, atol=atol, err_msg=metric)


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tensors of each replayed phase (each ``_Plan.run``), in order."""
    seen: list[int] = []
    run = R._Plan.run
    monkeypatch.setattr(R._Plan, "run", lambda self, ts: seen.append(len(ts)) or run(self, ts))
    return seen


def _train(model: nn.Module, fused: bool, steps: int, channels_last: bool, dtype: torch.dtype):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    with watch(model) as rec:
        rec._fused = fused
        for _ in range(steps):
            x = torch.randn(5, 3, 6, 6, generator=g, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), torch.arange(5) % 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return rec


@pytest.mark.parametrize(
    ("channels_last", "dtype"),
    [(False, torch.float32), (True, torch.float32), (False, torch.float64)],
)
def test_fast_path_records_what_the_torch_path_records(channels_last, dtype) -> None:
    torch.manual_seed(0)
    model = _Net().to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    fast = _train(model, True, 4, channels_last, dtype)
    slow = _train(twin, False, 4, channels_last, dtype)
    assert fast._deferrable  # later steps did go through the kernel
    assert fast.layers == slow.layers and fast.steps == slow.steps
    _assert_same_series(fast, slow, rtol=2e-5, atol=1e-6)


def test_fast_path_values_of_a_later_step_match_oracles() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 6), nn.Sigmoid())
    with torch.no_grad():
        model[0].bias[:4] = -1e3  # exactly 4 of 16 ReLU units dead
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs = torch.randn(3, 20, 12, generator=torch.Generator().manual_seed(1))
    with watch(model) as rec:
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
    assert {"0", "1", "2", "3"} <= rec._deferrable
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


def test_an_output_changed_in_place_later_is_dropped_then_measured_in_its_hook() -> None:
    torch.manual_seed(0)
    model = _LateInPlace()
    xs = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(2))
    with watch(model) as rec:
        for x in xs:
            model(x).sum().backward()
    means = rec.series("act_mean")["lin"]
    with torch.no_grad():
        want = [model.lin(x).mean().item() for x in xs]
    assert not math.isnan(means[1]) and means[1] == pytest.approx(want[1], rel=1e-5)
    assert math.isnan(means[2])  # kept for the kernel, changed before it ran: not the output
    assert "lin" in rec._mutated
    np.testing.assert_allclose(means[3:], want[3:], rtol=1e-5)


def test_a_recorded_step_leaves_no_tracked_objects_behind() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 1, 6, 6)

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    with watch(model):
        for _ in range(5):
            step()
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(200):
            step()
        gc.collect()
        grown = len(gc.get_objects()) - before
    assert grown < 50, f"{grown} objects kept by 200 recorded steps"


def test_caller_tensor_hooks_on_layer_outputs_still_fire_with_their_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    seen: dict[str, torch.Tensor] = {}

    def caller_hook(m: nn.Module, a: object, out: torch.Tensor) -> None:
        out.register_hook(lambda g: seen.__setitem__("hidden", g))

    # a hook the caller puts on the hidden output before the recorder's (its own forward hook)
    model[1].register_forward_hook(caller_hook)
    x = torch.randn(4, 6)
    with watch(model) as rec:
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
    from normkit.diagnostics import RECORD

    torch.manual_seed(0)
    base = _Net()
    full = _train(copy.deepcopy(base), True, 3, False, torch.float32)
    groups = {
        "activations": {"act_mean", "act_std", "act_min", "act_max", "dead_frac", "saturated_frac"},
        "gradients": {"grad_out_norm", "grad_norm"},
        "updates": {"weight_norm", "update_ratio"},
    }
    assert set(RECORD) == set(groups)
    for record in [("gradients",), ("updates",), ("activations", "updates")]:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(3)
        with watch(model, record=record) as rec:
            assert rec.record == tuple(r for r in RECORD if r in record)
            hooked = [n for n, m in model.named_modules() if m._forward_hooks]
            leaves = ["conv", "bn", "relu", "conv2", "sig", "fc", "tanh"]  # (not the Flatten)
            assert hooked == ([""] if record == ("updates",) else ["", *leaves])
            for _ in range(3):
                x = torch.randn(5, 3, 6, 6, generator=g)
                loss = F.cross_entropy(model(x), torch.arange(5) % 10)
                opt.zero_grad()
                loss.backward()
                opt.step()
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
    changes the batch size: the recorder's plans stop matching and must be rebuilt."""

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


def test_replayed_steps_and_steps_that_leave_the_plan_record_what_the_torch_path_records(
    replays: list[int],
) -> None:
    batches = [5, 5, 5, 7, 7, 5, 5, 5, 5, 5]
    skips = {5, 6}  # conv2 and sigmoid not called: the forward leaves its plan midway
    torch.manual_seed(0)
    base = _Shifting()
    recs = []
    for fused in (True, False):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(5)
        with watch(model) as rec:
            rec._fused = fused
            for step, n in enumerate(batches):
                model.skip = step in skips
                x = torch.randn(n, 3, 5, 5, generator=g)
                loss = F.cross_entropy(model(x), torch.arange(n) % 10)
                opt.zero_grad()  # (set to None: conv2 has no gradient when skipped)
                loss.backward()
                opt.step()
        recs.append(rec)
    fast, slow = recs
    # The forward's plan (7 outputs) is made at step 0, left at steps 3 (batch), 5 (layers) and
    # 7 (layers), made again by the step after each and replayed at 1, 2 and 9. The backward's
    # (7 output gradients + 8 parameter gradients) is made at the end of its step: replayed at
    # 1, 2, 4, 8 and 9; not made at 5 and 6 (conv2 has no gradient).
    assert replays == [7, 15, 7, 15, 15, 15, 7, 15], replays
    assert fast.layers == slow.layers and fast.steps == slow.steps == list(range(len(batches)))
    _assert_same_series(fast, slow, rtol=2e-5, atol=1e-6)
    grads = fast.series("grad_norm")
    assert math.isnan(grads["conv2"][5]) and not math.isnan(grads["conv2"][7])


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
@pytest.mark.parametrize("factory", [_Shared, _Net])
def test_replayed_steps_with_a_shared_layer_or_every_k_match_the_torch_path(
    factory, every, replays: list[int]
) -> None:
    torch.manual_seed(0)
    base = factory()
    recs = []
    for fused in (True, False):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(4)
        with watch(model, every=every) as rec:
            rec._fused = fused
            for _ in range(10):
                shape = (5, 6) if factory is _Shared else (5, 3, 6, 6)
                loss = model(torch.randn(*shape, generator=g)).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        recs.append(rec)
    fast, slow = recs
    recorded = len(range(0, 10, every))
    assert len(replays) == 2 * (recorded - 1)  # every recorded step after the first, both phases
    assert fast.layers == slow.layers and fast.steps == slow.steps == list(range(0, 10, every))
    if factory is _Shared:
        assert fast.layers[:3] == ["lin", "tanh", "lin#2"]
    _assert_same_series(fast, slow, rtol=2e-5, atol=1e-6)


def test_values_sorted_into_storage_mid_run_read_back_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Values are sorted into per-spec NumPy chunks now and then during training (here every
    step); what is read back does not depend on when that happened."""
    torch.manual_seed(0)
    base = _Shifting()
    recs = []
    for flush_at in (R._FLUSH_AT, 10):
        monkeypatch.setattr(R, "_FLUSH_AT", flush_at)
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(5)
        with watch(model) as rec:
            for step in range(6):
                model.skip = step == 3
                loss = F.cross_entropy(model(torch.randn(4, 3, 5, 5, generator=g)), torch.arange(4))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step == 2:
                    assert rec.series("act_std")  # a read midway sorts what is there
        recs.append(rec)
    assert len(recs[1]._groups[0]) > 1  # (sorted in several chunks)
    _assert_same_series(recs[0], recs[1], rtol=0, atol=0)  # (NaN where not recorded)
