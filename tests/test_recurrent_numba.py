"""The Numba LN-LSTM time loop: which loop runs, the float64 step-by-step oracle, gradients
against the autograd loop (float64) and against torch's float32 error, gradcheck, the vectorized
σ/tanh against NumPy's float64, NaN propagation and the thread budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call

import normkit.nn as nkn
from normkit.nn import recurrent
from tests.test_recurrent import _randomize, _ref_sequence

pytest.importorskip("numba")

from numba import njit

from normkit.backends.numba import _runtime
from normkit.nn import _recurrent_numba as R
from normkit.nn import _recurrent_numba_kernels as K

#: every subset of the three layer-norm sites
SITE_SETS = [s for n in range(4) for s in itertools.combinations(("ih", "hh", "cell"), n)]


def _lstm(sites, *, dtype=torch.float64, backend="numba", layers=2, bidir=True, bias=True):
    torch.manual_seed(0)
    m = nkn.LayerNormLSTM(
        3, 4, layers, bias=bias, bidirectional=bidir, dtype=dtype, ln=sites, backend=backend
    )
    _randomize(m, 1)
    return m


def _run(m, x, h0, c0):
    """outputs, final states and the gradients of a loss touching all three."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, h0, c0)]
    out, (h, c) = m(leaves[0], (leaves[1], leaves[2]))
    loss = out.sin().sum() + (h * h).sum() + (c * c.cos()).sum()
    grads = torch.autograd.grad(loss, [*leaves, *m.parameters()])
    return [out, h, c, *grads]


def _inputs(T, B, layers=2, bidir=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    d = layers * (2 if bidir else 1)
    return (
        torch.randn(T, B, 3, generator=g, dtype=dtype),
        torch.randn(d, B, 4, generator=g, dtype=dtype),
        torch.randn(d, B, 4, generator=g, dtype=dtype),
    )


# ============================================================ which loop runs


def test_loop_choice_rule(monkeypatch):
    step = torch.zeros(3, 4, 5)
    assert recurrent._lstm_loop("auto", step, None, 7) == "numba"
    assert recurrent._lstm_loop("numba", step.double(), None, 7) == "numba"
    assert recurrent._lstm_loop("torch", step, None, 7) == "torch"
    assert recurrent._lstm_loop("reference", step, None, 7) == "autograd"
    mask = torch.ones(7, 3, 1, dtype=torch.bool)
    assert recurrent._lstm_loop("auto", step, mask, 7) == "numba"
    assert recurrent._lstm_loop("torch", step, mask, 7) == "autograd"
    assert recurrent._lstm_loop("auto", step.half(), None, 7) == "autograd"
    assert recurrent._lstm_loop("auto", step, None, 0) == "torch"  # empty sequence
    # numba not installed: auto falls back to the torch-ops loop
    monkeypatch.setattr(recurrent, "installed", lambda name: name != "numba")
    assert recurrent._lstm_loop("auto", step, None, 7) == "torch"


@pytest.mark.parametrize(
    ("backend", "node"), [("auto", "_NumbaLSTMBackward"), ("torch", "_FusedLSTMBackward")]
)
def test_module_runs_the_chosen_loop(backend, node):
    m = nkn.LayerNormLSTM(3, 4, backend=backend)
    out, _ = m(torch.randn(5, 2, 3, requires_grad=True))
    assert out.grad_fn is not None and out.grad_fn.name() == node


# ============================================================ the float64 oracle


@pytest.mark.parametrize("sites", SITE_SETS, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("bias", [True, False])
def test_matches_stepwise_reference(sites, bias):
    m = _lstm(sites, bias=bias)
    x, h0, c0 = _inputs(5, 3)
    with torch.no_grad():
        out, (h, c) = m(x, (h0, c0))
    P = dict(m.named_parameters())
    r_out, r_h, r_c = _ref_sequence(
        "LSTM", P, x, torch.full((3,), 5), h0, c0, 2, True, set(m.ln_sites), m.eps
    )
    with torch.no_grad():
        torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, r_h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, r_c, rtol=1e-10, atol=1e-12)


# ============================================================ gradients


@pytest.mark.parametrize("sites", SITE_SETS, ids=lambda s: "+".join(s) or "none")
def test_float64_grads_equal_the_autograd_loop(sites):
    """T = 20 covers a full and a partial 16-step chunk of the W_hh gradient, both directions."""
    x, h0, c0 = _inputs(20, 3)
    ours = _run(_lstm(sites), x, h0, c0)
    ref = _run(_lstm(sites, backend="reference"), x, h0, c0)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sites", [("ih", "hh", "cell"), ("hh",), ()], ids=["all", "hh", "none"])
def test_float32_error_within_torchs(sites):
    """|numba32 − ref64| ≤ 2·|torch32 − ref64| + atol, outputs, states and every gradient."""
    x, h0, c0 = _inputs(20, 3)
    ref = _run(_lstm(sites, backend="reference"), x, h0, c0)
    x32, h32, c32 = (t.float() for t in (x, h0, c0))
    ours = _run(_lstm(sites, dtype=torch.float32), x32, h32, c32)
    theirs = _run(_lstm(sites, dtype=torch.float32, backend="torch"), x32, h32, c32)
    for a, t, r in zip(ours, theirs, ref, strict=True):
        err_ours = (a.double() - r).abs().max().item()
        err_torch = (t.double() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-6 * max(1.0, r.abs().max().item())


@pytest.mark.parametrize("threaded", [False, True])
def test_row_blocks_and_threads(monkeypatch, threaded):
    """Several row blocks (per-block partials summed after the loop), serial or with the
    threaded kernels, give the single-block results; torch's thread count is left as it was."""
    x, h0, c0 = _inputs(18, 5)
    ref = _run(_lstm(("ih", "hh", "cell")), x, h0, c0)
    threads = torch.get_num_threads()
    if threaded:
        monkeypatch.setattr(_runtime, "SERIAL_NUMEL", 0)
        monkeypatch.setattr(R, "_kernel", lambda parallel, serial: parallel)
    monkeypatch.setattr(R, "_parts", lambda rows: min(rows, 3))
    ours = _run(_lstm(("ih", "hh", "cell")), x, h0, c0)
    assert torch.get_num_threads() == threads
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("sites", [("ih", "hh", "cell"), ("cell",)], ids=["all", "cell"])
def test_gradcheck(sites):
    m = _lstm(sites, layers=1, bidir=False)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x, h0, c0 = (t.requires_grad_(True) for t in _inputs(3, 2, layers=1, bidir=False))

    def f(x, h, c, *ps):
        out, (hn, cn) = functional_call(m, dict(zip(names, ps, strict=True)), (x, (h, c)))
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), atol=1e-6, rtol=1e-5)


def test_gradcheck_bidirectional_fast():
    m = _lstm(("ih", "hh", "cell"), layers=2, bidir=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x, h0, c0 = (t.requires_grad_(True) for t in _inputs(4, 2))

    def f(x, h, c, *ps):
        out, (hn, cn) = functional_call(m, dict(zip(names, ps, strict=True)), (x, (h, c)))
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), atol=1e-6, rtol=1e-5, fast_mode=True)


def test_no_grad_forward_and_batch_first_match():
    m = _lstm(("ih", "hh", "cell"))
    x, h0, c0 = _inputs(6, 3)
    with_grad = m(x, (h0, c0))[0]
    with torch.no_grad():
        no_grad = m(x, (h0, c0))[0]
    m.batch_first = True
    bf = m(x.transpose(0, 1), (h0, c0))[0].transpose(0, 1)
    torch.testing.assert_close(no_grad, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(bf.detach(), with_grad.detach(), rtol=0, atol=0)


def test_nan_propagates_like_the_autograd_loop():
    x, h0, c0 = _inputs(6, 3)
    x[2, 0, 1] = float("nan")
    with torch.no_grad():
        ours = _lstm(("ih", "hh", "cell"))(x, (h0, c0))[0]
        ref = _lstm(("ih", "hh", "cell"), backend="reference")(x, (h0, c0))[0]
    assert torch.equal(ours.isnan(), ref.isnan())
    assert ours[:, 1:].isfinite().all()


# ============================================================ the vectorized σ and tanh


@njit
def _apply(fn_id, x, y):
    for i in range(x.size):
        y[i] = K._sigmoid(x[i]) if fn_id == 0 else K._tanh(x[i])


@pytest.mark.parametrize(("dtype", "ulps"), [(np.float32, 4), (np.float64, 8)])
def test_sigmoid_tanh_against_float64_numpy(dtype, ulps):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(2000) * 4,
            np.geomspace(1e-12, 1e3, 400),
            -np.geomspace(1e-12, 1e3, 400),
            [0.0, -0.0, 0.62, 0.63, -0.625, 86.9, -87.1, 88.5, -88.5, 709.5, -709.5, 1e30],
        ]
    ).astype(dtype)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        refs = (1.0 / (1.0 + np.exp(-x64)), np.tanh(x64))
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    for fn_id, ref in enumerate(refs):
        y = np.empty_like(x)
        _apply(fn_id, x, y)
        err = np.abs(y.astype(np.float64) - ref)
        bound = ulps * eps * np.abs(ref) + 4 * tiny
        assert (err <= bound).all(), (fn_id, x[err > bound][:5], y[err > bound][:5])
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    y = np.empty_like(special)
    _apply(0, special, y)
    assert np.isnan(y[0]) and y[1] == 1.0 and y[2] == 0.0
    _apply(1, special, y)
    assert np.isnan(y[0]) and y[1] == 1.0 and y[2] == -1.0


def test_input_without_grad_and_batch_first_grads():
    """x that does not require grad (no dx computed), batch_first input (a strided view)."""
    x, h0, c0 = _inputs(17, 3)
    grads = []
    for backend in ("numba", "reference"):
        m = _lstm(("ih", "hh", "cell"), backend=backend)
        m.batch_first = True
        out, (h, c) = m(x.transpose(0, 1), (h0, c0))
        loss = out.sin().sum() + (h * c).sum()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ============================================================ GRU


GRU_SITES = [(), ("ih",), ("hh",), ("ih", "hh")]


def _gru(sites, *, dtype=torch.float64, backend="numba", bias=True):
    torch.manual_seed(0)
    m = nkn.LayerNormGRU(
        3, 4, 2, bias=bias, bidirectional=True, dtype=dtype, ln=sites, backend=backend
    )
    _randomize(m, 1)
    return m


def _run_gru(m, x, h0):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, h0)]
    out, h = m(leaves[0], leaves[1])
    loss = out.sin().sum() + (h * h.cos()).sum()
    return [out, h, *torch.autograd.grad(loss, [*leaves, *m.parameters()])]


@pytest.mark.parametrize(
    ("backend", "node"), [("auto", "_NumbaGRUBackward"), ("torch", "StackBackward0")]
)
def test_gru_runs_the_chosen_loop(backend, node):
    m = nkn.LayerNormGRU(3, 4, backend=backend)
    out, _ = m(torch.randn(5, 2, 3, requires_grad=True))
    assert out.grad_fn is not None and out.grad_fn.name() == node


@pytest.mark.parametrize("sites", GRU_SITES, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("bias", [True, False])
def test_gru_matches_stepwise_reference(sites, bias):
    m = _gru(sites, bias=bias)
    x, h0, _ = _inputs(5, 3)
    with torch.no_grad():
        out, h = m(x, h0)
    r_out, r_h, _ = _ref_sequence(
        "GRU", dict(m.named_parameters()), x, torch.full((3,), 5), h0, h0, 2, True,
        set(m.ln_sites), m.eps,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, r_h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sites", GRU_SITES, ids=lambda s: "+".join(s) or "none")
def test_gru_float64_grads_equal_the_autograd_loop(sites):
    x, h0, _ = _inputs(20, 3)
    ours = _run_gru(_gru(sites), x, h0)
    ref = _run_gru(_gru(sites, backend="reference"), x, h0)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_gru_float32_error_within_torchs(monkeypatch):
    x, h0, _ = _inputs(20, 5)
    ref = _run_gru(_gru(("ih", "hh"), backend="reference"), x, h0)
    x32, h32 = x.float(), h0.float()
    theirs = _run_gru(_gru(("ih", "hh"), dtype=torch.float32, backend="torch"), x32, h32)
    monkeypatch.setattr(R, "_parts", lambda rows: min(rows, 3))  # several row blocks too
    ours = _run_gru(_gru(("ih", "hh"), dtype=torch.float32), x32, h32)
    for a, t, r in zip(ours, theirs, ref, strict=True):
        err_ours = (a.double() - r).abs().max().item()
        err_torch = (t.double() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-6 * max(1.0, r.abs().max().item())


def test_gru_gradcheck():
    torch.manual_seed(0)
    m = nkn.LayerNormGRU(3, 4, dtype=torch.float64, backend="numba")
    _randomize(m, 1)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x, h0, _ = (t.requires_grad_(True) for t in _inputs(3, 2, layers=1, bidir=False))

    def f(x, h, *ps):
        return functional_call(m, dict(zip(names, ps, strict=True)), (x, h))

    assert torch.autograd.gradcheck(f, (x, h0, *params), atol=1e-6, rtol=1e-5)


# ============================================================ padded sequences


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("sites", ["all", ("hh",), ()], ids=["all", "hh", "none"])
def test_packed_grads_equal_the_autograd_loop(monkeypatch, mode, sites):
    """PackedSequence input (unequal lengths, unsorted, T > one 16-step chunk): the Numba loop
    carries the state over padded steps exactly as the autograd loop does; both directions,
    two layers, every gradient; several row blocks."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    calls = []
    real = R._NumbaLSTM.apply if mode == "LSTM" else R._NumbaGRU.apply
    fn = R._NumbaLSTM if mode == "LSTM" else R._NumbaGRU
    monkeypatch.setattr(fn, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(R, "_parts", lambda rows: min(rows, 2))
    x, h0, c0 = _inputs(19, 4)
    lengths = torch.tensor([19, 5, 12, 1])
    results = []
    for backend in ("numba", "reference"):
        m = (_lstm if mode == "LSTM" else _gru)(sites if sites != "all" else True, backend=backend)
        ref = pack_padded_sequence(x, lengths, enforce_sorted=False)
        data = ref.data.clone().requires_grad_(True)
        packed = PackedSequence(data, ref.batch_sizes, ref.sorted_indices, ref.unsorted_indices)
        h = h0.clone().requires_grad_(True)
        c = c0.clone().requires_grad_(True)
        out, state = m(packed, (h, c) if mode == "LSTM" else h)
        states = state if mode == "LSTM" else (state,)
        loss = out.data.sin().sum() + sum((s * s.cos()).sum() for s in states)
        leaves = [data, h, c] if mode == "LSTM" else [data, h]
        results.append([out.data, *states, *torch.autograd.grad(loss, [*leaves, *m.parameters()])])
    assert len(calls) == 4  # 2 layers x 2 directions ran the Numba loop
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
