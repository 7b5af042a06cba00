"""Masked statistics (``mask=``) for batch_norm / layer_norm and the BatchNorm / LayerNorm modules.

Oracles: torch.nn.BatchNorm1d run on the unpadded values only, torch.nn.functional.layer_norm run
on each sample's unpadded slice, and float64 gradcheck.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import normkit.functional as NF
import normkit.nn as nkn


def _lengths_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.tensor(lengths)[:, None] > torch.arange(length)


def _padded(n: int, c: int, length: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, length, generator=g, dtype=torch.float64) * 3 + 1


@pytest.mark.parametrize("axis", [1, -1])
def test_masked_batch_norm_equals_torch_bn_on_unpadded_values(axis: int):
    n, c, length, lengths = 4, 5, 7, [7, 3, 5, 2]
    mask = _lengths_mask(lengths, length)
    ours = nkn.BatchNorm1d(c).double() if axis == 1 else nkn.BatchNorm(c, axis=-1).double()
    oracle = nn.BatchNorm1d(c).double()
    with torch.no_grad():
        w, b = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
        for m in (ours, oracle):
            m.weight.copy_(w)
            m.bias.copy_(b)
    for step in range(3):
        x = _padded(n, c, length, lengths, seed=step)
        # padding is garbage (NaN): it must not leak into statistics, outputs or running stats
        x = x.masked_fill(~mask[:, None, :], float("nan"))
        xin = x if axis == 1 else x.transpose(1, 2)
        y = ours(xin, mask)
        y = y if axis == 1 else y.transpose(1, 2)
        valid = x.transpose(1, 2)[mask]  # (K, C): the unpadded positions
        expect = oracle(valid)
        torch.testing.assert_close(y.transpose(1, 2)[mask], expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, oracle.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, oracle.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == 3


def test_masked_batch_norm_gradients_match_torch_bn_on_unpadded_values():
    n, c, length, lengths = 3, 4, 6, [6, 2, 4]
    mask = _lengths_mask(lengths, length)
    x = _padded(n, c, length, lengths).requires_grad_()
    w = (torch.rand(c, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=torch.float64, requires_grad=True)
    y = NF.batch_norm(x, None, None, w, b, True, mask=mask)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad((y * g * mask[:, None, :]).sum(), (x, w, b))

    xv = x.detach().transpose(1, 2)[mask].requires_grad_()
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    yv = F.batch_norm(xv, None, None, w2, b2, True)
    ex, ew, eb = torch.autograd.grad((yv * g.transpose(1, 2)[mask]).sum(), (xv, w2, b2))
    torch.testing.assert_close(gx.transpose(1, 2)[mask], ex)
    assert torch.all(gx.transpose(1, 2)[~mask] == 0), "padded positions must get zero gradient"
    torch.testing.assert_close(gw, ew)
    torch.testing.assert_close(gb, eb)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    c=st.integers(1, 4),
    extra=st.integers(0, 2),
)
def test_masked_batch_norm_statistics_property(lengths: list[int], c: int, extra: int):
    length = max(lengths) + extra
    if sum(lengths) < 2:
        return
    mask = _lengths_mask(lengths, length)
    x = _padded(len(lengths), c, length, lengths, seed=sum(lengths))
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    NF.batch_norm(x, rm, rv, training=True, momentum=1.0, mask=mask)
    valid = x.transpose(1, 2)[mask]
    torch.testing.assert_close(rm, valid.mean(0))
    torch.testing.assert_close(rv, valid.var(0, unbiased=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 3, 4, 5)], ids=["ncl", "nchw"])
def test_masked_batch_norm_native_path_equals_the_reference_math(dtype, shape):
    """The native masked path (CPU float, features at dim 1, mask constant along them) against
    the reference math: outputs, gradients of input and parameters (every output depends on the
    kept inputs through the statistics), running buffers and the batch counter."""
    from normkit import _reference

    g = torch.Generator().manual_seed(3)
    mask = torch.rand((shape[0], *shape[2:]), generator=g) < 0.7
    mask.view(shape[0], -1)[0, 0] = True  # kept: the NaN below enters the statistics
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    x = x.masked_fill(~mask.unsqueeze(1), 1e3)  # far-off padding: any leak shows
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(c, generator=g, dtype=dtype).requires_grad_()
    rm, rv, nbt = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype), torch.tensor(0)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = NF.batch_norm(xa, rm, rv, w, b, True, momentum=None, num_batches_tracked=nbt, mask=mask)
    yb = _reference.batch_norm(xb, None, None, w, b, True, 1e-5, 1, mask=mask.unsqueeze(1))[0]
    torch.testing.assert_close(ya, yb)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    ga = torch.autograd.grad(ya, [xa, w, b], dy)
    gb = torch.autograd.grad(yb, [xb, w, b], dy)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v)
    valid = x.movedim(1, -1)[mask]
    torch.testing.assert_close(rm, valid.mean(0))  # momentum=None, first batch: the batch's
    torch.testing.assert_close(rv, valid.var(0, unbiased=True))
    assert nbt.item() == 1
    bad = x.clone()
    bad[0, 0].view(-1)[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="left unchanged"):  # kept NaN: buffers stay
        NF.batch_norm(bad, rm, rv, training=True, num_batches_tracked=nbt, mask=mask)
    torch.testing.assert_close(rm, valid.mean(0))
    assert nbt.item() == 1


def test_masked_batch_norm_eval_ignores_mask_and_gradcheck():
    x = _padded(3, 4, 5, [5, 2, 3]).requires_grad_()
    mask = _lengths_mask([5, 2, 3], 5)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    torch.testing.assert_close(
        NF.batch_norm(x, rm, rv, training=False, mask=mask),
        F.batch_norm(x, rm, rv, training=False),
    )
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: NF.batch_norm(x, None, None, w, b, True, mask=mask), (x, w, b)
    )


def test_masked_layer_norm_equals_layer_norm_of_each_unpadded_slice():
    n, length, c, lengths = 3, 6, 4, [6, 2, 4]
    mask = _lengths_mask(lengths, length)  # (N, L), extended on the right to (N, L, 1)
    x = torch.randn(n, length, c, dtype=torch.float64) * 2 + 3
    x = x.masked_fill(~mask[..., None], float("inf"))
    w = torch.rand(length, c, dtype=torch.float64) + 0.5
    b = torch.randn(length, c, dtype=torch.float64)
    ln = nkn.LayerNorm((length, c)).double()
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    y = ln(x, mask)
    for i, k in enumerate(lengths):
        expect = F.layer_norm(x[i, :k], (k, c), w[:k], b[:k])
        torch.testing.assert_close(y[i, :k], expect)


def test_masked_layer_norm_gradcheck_and_full_mask_is_plain_layer_norm():
    mask = _lengths_mask([4, 1, 3], 4)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, 5, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: NF.layer_norm(x, (4, 5), w, b, mask=mask), (x, w, b)
    )
    full = torch.ones(3, 4, 5, dtype=torch.bool)
    torch.testing.assert_close(
        NF.layer_norm(x, (5,), w[0], b[0], mask=full), F.layer_norm(x, (5,), w[0], b[0])
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_row_masked_layer_norm_equals_layer_norm_and_the_affine_map_of_dropped_rows(dtype, affine):
    """A (N, L) mask over (N, L, C) with normalized_shape (C,) keeps or drops whole rows (the
    native path): kept rows are F.layer_norm, dropped rows x/√ε·γ + β (their moments are 0, 0),
    gradients as the reference math's, non-finite padding kept out of the kept rows."""
    from normkit import _reference

    n, length, c = 3, 5, 4
    mask = _lengths_mask([5, 2, 0], length)
    x = torch.randn(n, length, c, dtype=torch.float64) * 2 + 3
    x = x.masked_fill(~mask[..., None], float("nan")).to(dtype)
    x[1, 3] = 7.0  # a finite dropped row: its gradient is the affine map's
    w = (torch.rand(c, dtype=dtype) + 0.5) if affine else None
    b = torch.randn(c, dtype=dtype) if affine else None
    params = [t.requires_grad_() for t in (w, b) if t is not None]
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = NF.layer_norm(xa, (c,), w, b, eps=1e-5, mask=mask)
    yb = _reference.layer_norm(xb, (c,), w, b, 1e-5, mask=mask[..., None])
    torch.testing.assert_close(ya, yb, equal_nan=True)
    torch.testing.assert_close(ya[0], F.layer_norm(x[0], (c,), w, b))
    g = torch.randn(ya.shape, dtype=dtype)
    grads_a = torch.autograd.grad(ya, [xa, *params], g)
    grads_b = torch.autograd.grad(yb, [xb, *params], g)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, equal_nan=True)
    assert torch.isfinite(grads_a[0]).all()  # dx: the padding's NaN stays in its own output
    if dtype == torch.float64 and affine:
        xf = x.nan_to_num(1.5).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, w, b: NF.layer_norm(x, (c,), w, b, mask=mask), (xf, *params)
        )


def test_mask_errors_say_what_to_do():
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="bool tensor"):
        NF.batch_norm(x, None, None, training=True, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        NF.batch_norm(x, None, None, training=True, mask=torch.ones(3, 5, dtype=torch.bool))
    only_one = torch.zeros(2, 4, dtype=torch.bool)
    only_one[0, 0] = True
    with pytest.raises(ValueError, match="inside the mask"):
        NF.batch_norm(x, None, None, training=True, mask=only_one)
    with pytest.raises(ValueError, match="does not broadcast"):
        NF.layer_norm(x, (4,), mask=torch.ones(5, dtype=torch.bool))
