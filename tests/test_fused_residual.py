"""Fused residual norms (add_layer_norm / add_rms_norm and their modules) on every backend.

Oracles: torch.nn.functional in float64 on ``x + residual`` (outputs and gradients of x,
residual, weight, bias), float64 gradcheck, and torch.nn.LayerNorm/RMSNorm state_dicts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normkit
import normkit.functional as NF
import normkit.nn as nkn

BACKENDS = normkit.backends.available()
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _inputs(dtype, shape=(3, 5, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    r = (torch.randn(shape, generator=g, dtype=torch.float64) - 1).to(dtype)
    w = (torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    return x, r, w, b


def _oracle(op, x, r, w, b, n):
    x, r, w, b = (t.detach().double().requires_grad_() for t in (x, r, w, b))
    s = x + r
    y = F.layer_norm(s, (n,), w, b, 1e-05) if op == "ln" else F.rms_norm(s, (n,), w, 1e-06)
    return y, s, (x, r, w, b)


def _ours(op, x, r, w, b, n, backend):
    if op == "ln":
        return NF.add_layer_norm(x, r, n, w, b, 1e-5, backend=backend)
    return NF.add_rms_norm(x, r, n, w, 1e-6, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_and_grads_match_float64_torch(backend, op, dtype):
    n = 16
    x, r, w, b = (t.requires_grad_() for t in _inputs(dtype))
    y, s = _ours(op, x, r, w, b, n, backend)
    ry, rs, leaves = _oracle(op, x, r, w, b, n)
    assert y.dtype == dtype and s.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), ry, rtol=tol, atol=tol)
    torch.testing.assert_close(s.double(), rs, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(5)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gs = torch.randn(y.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([y, s], [gy.to(dtype), gs.to(dtype)])
    torch.autograd.backward([ry, rs], [gy, gs])
    ours = [x, r, w] + ([b] if op == "ln" else [])
    for mine, ref in zip(ours, leaves, strict=False):
        torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=10 * tol, atol=10 * tol)
    if op == "rms":
        assert b.grad is None


@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, op):
    x, r, w, b = (t.requires_grad_() for t in _inputs(torch.float64, (2, 3, 6)))

    def f(x, r, w, b):
        return _ours(op, x, r, w, b, 6, backend)

    assert torch.autograd.gradcheck(f, (x, r, w, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_within_twice_torch_error(backend):
    x, r, w, b = _inputs(torch.bfloat16)
    y, s = NF.add_layer_norm(x, r, 16, w, b, backend=backend)
    ry, rs, _ = _oracle("ln", x, r, w, b, 16)
    low = F.layer_norm(x + r, (16,), w, b, 1e-5)  # torch in bfloat16: the error to beat
    bound = 2 * (low.double() - ry).abs().max().item() + 1e-2
    assert y.dtype == torch.bfloat16
    assert (y.double() - ry).abs().max().item() <= bound
    assert (s.double() - rs).abs().max().item() <= 2 * ((x + r).double() - rs).abs().max() + 1e-2


def test_modules_load_torch_state_dicts():
    x, r, _, _ = _inputs(torch.float32)
    ln = nn.LayerNorm(16)
    rms = nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        for p in (*ln.parameters(), *rms.parameters()):
            p.uniform_(0.5, 1.5)
    ours_ln = nkn.AddLayerNorm(16)
    ours_ln.load_state_dict(ln.state_dict(), strict=True)
    ours_rms = nkn.AddRMSNorm(16, eps=1e-6)
    ours_rms.load_state_dict(rms.state_dict(), strict=True)
    y, s = ours_ln(x, r)
    torch.testing.assert_close(y, ln(x + r), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, x + r)
    y, s = ours_rms(x, r)
    torch.testing.assert_close(y, rms(x + r), rtol=1e-5, atol=1e-5)
    assert "16" in repr(ours_ln) and "eps=1e-06" in repr(ours_rms)


@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_writes_into_given_buffers(backend, op):
    x, r, w, b = _inputs(torch.float32)
    out = (torch.full_like(x, float("nan")), torch.full_like(x, float("nan")))
    with torch.no_grad():
        if op == "ln":
            y, s = NF.add_layer_norm(x, r, 16, w, b, out=out, backend=backend)
        else:
            y, s = NF.add_rms_norm(x, r, 16, w, 1e-6, out=out, backend=backend)
    assert y is out[0] and s is out[1]
    ry, rs, _ = _oracle(op, x, r, w, b, 16)
    torch.testing.assert_close(y.double(), ry, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(s.double(), rs, rtol=2e-5, atol=2e-5)


def test_bad_inputs_say_the_fix():
    x, r, _w, _b = _inputs(torch.float32)
    with pytest.raises(ValueError, match="residual must be a tensor of the input's shape"):
        NF.add_layer_norm(x, r[:, :2], 16)
    with pytest.raises(TypeError, match=r"residual\.to\(input\)"):
        NF.add_rms_norm(x, r.double(), 16)
    with pytest.raises(ValueError, match="normalized_shape"):
        NF.add_layer_norm(x, r, 7)
    with pytest.raises(RuntimeError, match="no_grad"):
        NF.add_layer_norm(x.requires_grad_(), r, 16, out=(torch.empty_like(x), torch.empty_like(x)))
