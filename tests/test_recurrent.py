"""Layer-normalized RNN/LSTM/GRU: torch.nn twins with LN off, a float64 step-by-step oracle with
LN on, gradcheck, the per-step invariance LN promises, and the error messages."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import normkit.nn as nkn

TORCH_SEQ = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}
OURS_SEQ = {"RNN": nkn.LayerNormRNN, "LSTM": nkn.LayerNormLSTM, "GRU": nkn.LayerNormGRU}
TORCH_CELL = {"RNN": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}
OURS_CELL = {
    "RNN": nkn.LayerNormRNNCell,
    "LSTM": nkn.LayerNormLSTMCell,
    "GRU": nkn.LayerNormGRUCell,
}
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
MODES = ("RNN", "LSTM", "GRU")


def _states(s: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return s if isinstance(s, tuple) else (s,)


def _data(out: Tensor | PackedSequence) -> Tensor:
    return out.data if isinstance(out, PackedSequence) else out


def _randomize(module: nn.Module, seed: int) -> None:
    """Non-trivial values everywhere, LN gains/shifts included (so they are tested too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.startswith("ln_") and "weight" in name else 0.0
            p.copy_(base + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ============================================================ LN off == torch.nn (same weights)


def _compare_with_torch(
    mode: str,
    *,
    layers: int,
    bidirectional: bool,
    batch_first: bool,
    packed: bool,
    with_hx: bool,
    bias: bool = True,
    nonlinearity: str = "tanh",
    seq: int = 5,
    batch: int = 3,
) -> None:
    torch.manual_seed(0)
    kw = {"nonlinearity": nonlinearity} if mode == "RNN" else {}
    theirs = TORCH_SEQ[mode](
        3,
        4,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=torch.float64,
        **kw,
    )
    ours = OURS_SEQ[mode](
        3,
        4,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=torch.float64,
        ln=False,
        **kw,
    )
    missing = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    shape = (batch, seq, 3) if batch_first else (seq, batch, 3)
    x = torch.randn(shape, dtype=torch.float64)
    hx = None
    if with_hx:
        d = layers * (2 if bidirectional else 1)
        h0 = torch.randn(d, batch, 4, dtype=torch.float64)
        hx = (h0, torch.randn_like(h0)) if mode == "LSTM" else h0
    if packed:
        lengths = torch.randint(1, seq + 1, (batch,))
        lengths[0] = seq
        inp: Tensor | PackedSequence = pack_padded_sequence(
            x, lengths, batch_first=batch_first, enforce_sorted=False
        )
    else:
        inp = x
    results = []
    for m in (theirs, ours):
        xin = inp
        leaf = x.clone().requires_grad_(True)
        if packed:
            xin = PackedSequence(
                inp.data.clone().requires_grad_(True),
                inp.batch_sizes,
                inp.sorted_indices,
                inp.unsorted_indices,
            )
            leaf = xin.data
        else:
            xin = leaf
        out, state = m(xin, hx)
        loss = _data(out).sin().sum() + sum((s * s).sum() for s in _states(state))
        grads = torch.autograd.grad(loss, [leaf, *m.parameters()])
        results.append((out, _states(state), grads))
    (o1, s1, g1), (o2, s2, g2) = results
    if packed:
        assert torch.equal(o1.batch_sizes, o2.batch_sizes)
        assert o1.sorted_indices is None or torch.equal(o1.sorted_indices, o2.sorted_indices)
    torch.testing.assert_close(_data(o2), _data(o1), rtol=1e-10, atol=1e-12)
    for a, b in zip(s2, s1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "packed", "with_hx"),
    [
        (1, False, False, False, False),
        (2, True, False, False, True),
        (2, False, True, False, True),
        (1, True, True, True, False),
        (2, True, False, True, True),
    ],
)
def test_ln_off_equals_torch(mode, layers, bidirectional, batch_first, packed, with_hx):
    _compare_with_torch(
        mode,
        layers=layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        packed=packed,
        with_hx=with_hx,
    )


def test_ln_off_equals_torch_relu_no_bias():
    _compare_with_torch(
        "RNN",
        layers=2,
        bidirectional=True,
        batch_first=False,
        packed=True,
        with_hx=False,
        bias=False,
        nonlinearity="relu",
    )


@settings(max_examples=8, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    packed=st.booleans(),
    seq=st.integers(1, 6),
    batch=st.integers(1, 4),
)
def test_ln_off_equals_torch_shapes(mode, layers, bidirectional, batch_first, packed, seq, batch):
    _compare_with_torch(
        mode,
        layers=layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        packed=packed,
        with_hx=True,
        seq=seq,
        batch=batch,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_cells_ln_off_equal_torch(mode, unbatched):
    torch.manual_seed(1)
    theirs = TORCH_CELL[mode](3, 5, dtype=torch.float64)
    ours = OURS_CELL[mode].from_torch(theirs, ln=False)
    x = torch.randn(3, dtype=torch.float64) if unbatched else torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(*x.shape[:-1], 5, dtype=torch.float64)
    hx = (h, torch.randn_like(h)) if mode == "LSTM" else h
    outs = []
    for m in (theirs, ours):
        xl = x.clone().requires_grad_(True)
        y = _states(m(xl, hx))
        loss = sum(t.sin().sum() for t in y)
        outs.append((y, torch.autograd.grad(loss, [xl, *m.parameters()])))
    for a, b in zip(outs[1][0] + outs[1][1], outs[0][0] + outs[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unbatched_sequence_equals_torch():
    torch.manual_seed(2)
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = nkn.LayerNormLSTM.from_torch(theirs, ln=False)
    x = torch.randn(6, 3, dtype=torch.float64)
    h0 = torch.randn(4, 4, dtype=torch.float64)
    (y1, (h1, c1)), (y2, (h2, c2)) = theirs(x, (h0, h0)), ours(x, (h0, h0))
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_between_layers():
    """dropout=1 zeroes the second layer's input in training; eval ignores dropout."""
    torch.manual_seed(3)
    ours = nkn.LayerNormLSTM(3, 4, num_layers=2, dropout=1.0, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    top = nkn.LayerNormLSTM(4, 4, dtype=torch.float64)
    top.load_state_dict(
        {k.replace("_l1", "_l0"): v for k, v in ours.state_dict().items() if "_l1" in k}
    )
    ours.train()
    y_train, _ = ours(x)
    y_ref, _ = top(torch.zeros(5, 2, 4, dtype=torch.float64))
    torch.testing.assert_close(y_train, y_ref)
    ours.eval()
    bottom = nkn.LayerNormLSTM(3, 4, dtype=torch.float64)
    bottom.load_state_dict({k: v for k, v in ours.state_dict().items() if "_l0" in k})
    y_eval, _ = ours(x)
    torch.testing.assert_close(y_eval, top(bottom(x)[0])[0])


# ============================================================ LN on: a float64 step-by-step oracle


def _ref_norm(v: Tensor, eps: float) -> Tensor:
    mu = v.sum() / v.numel()
    var = ((v - mu) ** 2).sum() / v.numel()
    return (v - mu) / math.sqrt(var.item() + eps)


def _ref_step(mode, x, h, c, P, sfx, sites, eps, relu=False):
    """One step of one sample, gate by gate, written from the paper's equations."""
    H = h.numel()
    G = GATES[mode]
    wi, wh = P[f"weight_ih{sfx}"] @ x, P[f"weight_hh{sfx}"] @ h
    a_i, a_h = [], []
    for k in range(G):
        sl = slice(k * H, (k + 1) * H)
        vi, vh = wi[sl], wh[sl]
        if "ih" in sites:
            vi = _ref_norm(vi, eps) * P[f"ln_ih_weight{sfx}"][k]
        if "hh" in sites:
            vh = _ref_norm(vh, eps) * P[f"ln_hh_weight{sfx}"][k]
        if f"bias_ih{sfx}" in P:
            vi = vi + P[f"bias_ih{sfx}"][sl]
            vh = vh + P[f"bias_hh{sfx}"][sl]
        a_i.append(vi)
        a_h.append(vh)
    sig = torch.sigmoid
    if mode == "LSTM":
        i, f, g, o = (sig(a_i[0] + a_h[0]), sig(a_i[1] + a_h[1]),
                      torch.tanh(a_i[2] + a_h[2]), sig(a_i[3] + a_h[3]))  # fmt: skip
        c_new = f * c + i * g
        cn = c_new
        if "cell" in sites:
            cn = _ref_norm(c_new, eps) * P[f"ln_cell_weight{sfx}"] + P[f"ln_cell_bias{sfx}"]
        return o * torch.tanh(cn), c_new
    if mode == "GRU":
        r, z = sig(a_i[0] + a_h[0]), sig(a_i[1] + a_h[1])
        n = torch.tanh(a_i[2] + r * a_h[2])
        return (1 - z) * n + z * h, None
    pre = a_i[0] + a_h[0]
    return (torch.relu(pre) if relu else torch.tanh(pre)), None


def _ref_sequence(mode, P, xs, lengths, h0, c0, layers, bidir, sites, eps, relu=False):
    """Each sample alone over its own length; returns outputs (T, B, D·H) (0 past the length),
    h_n, c_n as torch lays them out."""
    T, B = xs.shape[:2]
    D = 2 if bidir else 1
    H = h0.shape[-1]
    out = torch.zeros(T, B, D * H, dtype=xs.dtype)
    hn = torch.zeros(layers * D, B, H, dtype=xs.dtype)
    cn = torch.zeros_like(hn)
    for b in range(B):
        L = int(lengths[b])
        seq = [xs[t, b] for t in range(L)]
        for layer in range(layers):
            per_dir = []
            for d in range(D):
                idx = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                h, c = h0[idx, b], c0[idx, b]
                ys = [None] * L
                order = range(L - 1, -1, -1) if d else range(L)
                for t in order:
                    h, c = _ref_step(mode, seq[t], h, c, P, sfx, sites, eps, relu)
                    ys[t] = h
                hn[idx, b] = h
                if c is not None:
                    cn[idx, b] = c
                per_dir.append(ys)
            seq = [torch.cat([per_dir[d][t] for d in range(D)]) for t in range(L)]
        for t in range(L):
            out[t, b] = seq[t]
    return out, hn, cn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("layers", "bidir", "packed", "sites"),
    [
        (1, False, False, "all"),
        (2, True, True, "all"),
        (1, True, False, ("hh",)),
        (2, False, True, ("ih", "cell")),
    ],
)
def test_ln_on_matches_stepwise_reference(mode, layers, bidir, packed, sites):
    torch.manual_seed(4)
    if sites != "all" and mode != "LSTM":
        sites = tuple(s for s in sites if s != "cell")
    ln = True if sites == "all" else sites
    eps = 1e-5
    m = OURS_SEQ[mode](3, 4, layers, bidirectional=bidir, dtype=torch.float64, ln=ln, eps=eps)
    _randomize(m, 5)
    T, B = 6, 3
    xs = torch.randn(T, B, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4]) if packed else torch.full((B,), T)
    h0 = torch.randn(layers * (2 if bidir else 1), B, 4, dtype=torch.float64)
    c0 = torch.randn_like(h0)
    hx = (h0, c0) if mode == "LSTM" else h0
    inp = pack_padded_sequence(xs, lengths, enforce_sorted=False) if packed else xs
    out, state = m(inp, hx)
    if packed:
        out, _ = pad_packed_sequence(out)
    sites_set = set(m.ln_sites)
    P = dict(m.named_parameters())
    r_out, r_h, r_c = _ref_sequence(mode, P, xs, lengths, h0, c0, layers, bidir, sites_set, eps)
    with torch.no_grad():
        torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(_states(state)[0], r_h, rtol=1e-10, atol=1e-12)
        if mode == "LSTM":
            torch.testing.assert_close(state[1], r_c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_ln_on_cells_match_reference(mode):
    torch.manual_seed(6)
    cell = OURS_CELL[mode](3, 4, dtype=torch.float64)
    _randomize(cell, 7)
    x, h, c = (torch.randn(2, k, dtype=torch.float64) for k in (3, 4, 4))
    y = _states(cell(x, (h, c) if mode == "LSTM" else h))
    P = {k + "_l0": v for k, v in cell.named_parameters()}
    for b in range(2):
        ref = _ref_step(mode, x[b], h[b], c[b], P, "_l0", set(cell.ln_sites), cell.eps)
        with torch.no_grad():
            torch.testing.assert_close(y[0][b], ref[0], rtol=1e-10, atol=1e-12)
            if mode == "LSTM":
                torch.testing.assert_close(y[1][b], ref[1], rtol=1e-10, atol=1e-12)


def test_relu_rnn_ln_on_matches_reference():
    torch.manual_seed(8)
    m = nkn.LayerNormRNN(3, 4, 2, nonlinearity="relu", dtype=torch.float64)
    _randomize(m, 9)
    xs = torch.randn(5, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64)
    out, h = m(xs, h0)
    r_out, r_h, _ = _ref_sequence(
        "RNN", dict(m.named_parameters()), xs, torch.full((2,), 5), h0, h0, 2, False,
        {"ih", "hh"}, m.eps, relu=True,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, r_h, rtol=1e-10, atol=1e-12)


# ============================================================ gradcheck (float64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck(mode, packed):
    torch.manual_seed(10)
    m = OURS_SEQ[mode](2, 3, 1, bidirectional=True, dtype=torch.float64)
    _randomize(m, 11)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 3])
    ref = pack_padded_sequence(x, lengths, enforce_sorted=False)

    def f(xd, h, *ps):
        inp = PackedSequence(xd, ref.batch_sizes, ref.sorted_indices, ref.unsorted_indices)
        inp = inp if packed else xd
        hx = (h, h * 0.5) if mode == "LSTM" else h
        out, state = functional_call(m, dict(zip(names, ps, strict=True)), (inp, hx))
        return (_data(out), *_states(state))

    xd = (ref.data if packed else x).clone().requires_grad_(True)
    # fast mode (random projections of the Jacobian) keeps this cheap; the cells below run the
    # full check, and the multi-layer gradients are compared with torch.nn's above.
    assert torch.autograd.gradcheck(f, (xd, h0, *params), atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_cell(mode):
    torch.manual_seed(12)
    cell = OURS_CELL[mode](2, 3, dtype=torch.float64)
    _randomize(cell, 13)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h, *ps):
        hx = (h, h.cos()) if mode == "LSTM" else h
        return _states(functional_call(cell, dict(zip(names, ps, strict=True)), (x, hx)))

    assert torch.autograd.gradcheck(f, (x, h, *params), atol=1e-6, rtol=1e-5)


# ============================================================ the invariance LN promises


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [0.25, 3.0, 40.0])
def test_scaling_hidden_state_leaves_next_step_unchanged(mode, k):
    """LN on W_hh h: h → k·h (k > 0) at step t leaves step t+1's normalized pre-activations
    unchanged. LSTM/RNN outputs are then identical; the GRU's ``h' = (1−z)n + z·h`` becomes
    affine in k (gates unchanged), so three scalings lie on a line."""
    torch.manual_seed(14)
    m = OURS_SEQ[mode](3, 5, dtype=torch.float64, eps=1e-14)
    _randomize(m, 15)
    xs = torch.randn(8, 2, 3, dtype=torch.float64)
    t = 4
    _, s = m(xs[:t])
    s = _states(s)

    def rest(scale: float) -> Tensor:
        hx = (s[0] * scale, s[1]) if mode == "LSTM" else s[0] * scale
        return m(xs[t:], hx)[0]

    if mode == "GRU":
        y1, yk, y2k = rest(1.0), rest(k), rest(2 * k)
        # y(s) = A + s·B at the next step: (y(2k) − y(k))·(k − 1) = (y(k) − y(1))·k
        torch.testing.assert_close((y2k[0] - yk[0]) * (k - 1), (yk[0] - y1[0]) * k)
    else:
        torch.testing.assert_close(rest(k), rest(1.0), rtol=1e-9, atol=1e-11)
    # Without the recurrent layer norm the invariance is lost (the test is sensitive).
    off = OURS_SEQ[mode](3, 5, dtype=torch.float64, ln=("ih",))
    off.load_state_dict(m.state_dict(), strict=False)
    h = s[0]
    hx1 = (h, s[1]) if mode == "LSTM" else h
    hxk = (h * k, s[1]) if mode == "LSTM" else h * k
    assert not torch.allclose(off(xs[t:], hxk)[0], off(xs[t:], hx1)[0], atol=1e-6)


# ============================================================ state dicts, errors


def test_torch_state_dict_loads_and_ln_parameters_named():
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ours = nkn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {
        f"ln_{s}{sfx}"
        for s in ("ih_weight", "hh_weight", "cell_weight", "cell_bias")
        for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse")
    }
    assert ours.ln_ih_weight_l1_reverse.shape == (4, 4)
    assert nkn.LayerNormGRU(3, 4, ln=("hh",)).ln_ih_weight_l0 is None


@pytest.mark.parametrize("mode", MODES)
def test_wrong_input_size(mode):
    m = OURS_SEQ[mode](3, 4)
    with pytest.raises(ValueError, match=r"input_size=3.*feature size 5"):
        m(torch.randn(6, 2, 5))
    cell = OURS_CELL[mode](3, 4)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        cell(torch.randn(2, 5))


@pytest.mark.parametrize("mode", MODES)
def test_wrong_hidden_shape(mode):
    m = OURS_SEQ[mode](3, 4, num_layers=2)
    h = torch.zeros(1, 2, 4)
    hx = (h, h) if mode == "LSTM" else h
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 4\).*got \(1, 2, 4\)"):
        m(torch.randn(6, 2, 3), hx)
    cell = OURS_CELL[mode](3, 4)
    h = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"must have shape \(2, 4\).*got \(2, 5\)"):
        cell(torch.randn(2, 3), (h, h) if mode == "LSTM" else h)


def test_batch_first_mismatch_says_the_fix():
    m = nkn.LayerNormLSTM(3, 4)  # batch_first=False
    x = torch.randn(8, 5, 3)  # (batch=8, seq=5) given to a time-major module
    h = torch.zeros(1, 8, 4)
    with pytest.raises(ValueError, match=r"batch_first=True"):
        m(x, (h, h))
    m = nkn.LayerNormGRU(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"batch_first=False"):
        m(torch.randn(5, 8, 3), torch.zeros(1, 8, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown layer-norm site"):
        nkn.LayerNormGRU(3, 4, ln=("cell",))
    with pytest.raises(TypeError, match="collection of site names"):
        nkn.LayerNormLSTM(3, 4, ln="hh")
    with pytest.raises(ValueError, match="dropout"):
        nkn.LayerNormLSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="3-D"):
        nkn.LayerNormLSTM(3, 4)(torch.randn(2, 2, 2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        nkn.LayerNormLSTM(3, 4)(torch.ones(2, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        nkn.LayerNormLSTM(3, 4)(torch.randn(2, 2, 3), torch.zeros(1, 2, 4))


@pytest.mark.parametrize(
    "ours, make",
    [
        (nkn.LayerNormRNN, lambda: nn.RNN(5, 7, 2, nonlinearity="relu", batch_first=True)),
        (nkn.LayerNormGRU, lambda: nn.GRU(5, 7, 1, bidirectional=True, batch_first=True)),
    ],
    ids=["rnn-relu", "gru-bi"],
)
def test_from_torch_without_ln_equals_the_torch_module(ours, make):
    torch.manual_seed(0)
    theirs = make().double()
    mine = ours.from_torch(theirs, ln=False)
    assert getattr(mine, "nonlinearity", None) == getattr(theirs, "nonlinearity", None)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    for a, b in zip(mine(x), theirs(x), strict=True):
        torch.testing.assert_close(a, b)
