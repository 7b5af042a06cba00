"""Moments, Chan merge and running-stat updates against numpy float64 and torch.nn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normkit._stats import (
    Moments,
    accumulation_dtype,
    bessel_correction,
    merge_moments,
    merge_stacked,
    moments,
    running_average_factor,
    update_running_stats,
)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
)
def test_moments_match_numpy_float64(shape, data):
    dims = data.draw(
        st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True)
    )
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    mean, var = moments(x, dims)
    xn = x.numpy()
    np.testing.assert_allclose(mean.numpy(), xn.mean(axis=tuple(dims)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), xn.var(axis=tuple(dims)), rtol=1e-10, atol=1e-12)


def test_moments_are_stable_for_large_offsets():
    """The naive E[x²]−E[x]² loses every digit here; two-pass moments keep them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=g) + 1e4
    _, var = moments(x, [0])
    exact = np.var(x.double().numpy(), axis=0)
    np.testing.assert_allclose(var.numpy(), exact, rtol=1e-3)
    naive = (x.square().mean(0) - x.mean(0).square()).numpy()
    assert np.abs(naive - exact).max() > 10 * np.abs(var.numpy() - exact).max()


def test_low_precision_accumulates_in_float32():
    assert accumulation_dtype(torch.bfloat16) == torch.float32
    assert accumulation_dtype(torch.float16) == torch.float32
    assert accumulation_dtype(torch.float64) == torch.float64
    x = torch.full((70000,), 1.0, dtype=torch.float16)  # sum overflows float16 (max 65504)
    mean, var = moments(x, [0])
    assert mean.dtype == torch.float32 and mean.item() == 1.0 and var.item() == 0.0


def test_masked_moments_equal_moments_of_kept_values():
    x = torch.randn(6, 10, dtype=torch.float64)
    mask = torch.rand(6, 10) > 0.4
    mask[:, 0] = True
    mean, var, count = moments(x, [1], mask=mask, return_count=True)
    for i in range(6):
        kept = x[i][mask[i]].numpy()
        assert count[i].item() == kept.size
        np.testing.assert_allclose(mean[i].item(), kept.mean(), rtol=1e-12)
        np.testing.assert_allclose(var[i].item(), kept.var(), rtol=1e-10, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=6).filter(lambda s: sum(s) > 0))
def test_chan_merge_equals_moments_of_concatenation(sizes):
    chunks = [torch.randn(n, 3, dtype=torch.float64) * 5 + 100 for n in sizes]
    parts = [
        Moments.of(c, [0])
        if len(c)
        else Moments(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
        for c in chunks
    ]
    merged = merge_moments(parts)
    full = torch.cat(chunks).numpy()
    np.testing.assert_allclose(merged.count.reshape(-1).numpy(), len(full))
    np.testing.assert_allclose(merged.mean.reshape(-1).numpy(), full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.var.reshape(-1).numpy(), full.var(0), rtol=1e-9)
    if len(full) > 1:
        np.testing.assert_allclose(
            merged.unbiased_var.reshape(-1).numpy(), full.var(0, ddof=1), rtol=1e-9
        )


def test_merge_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        merge_moments([])


def test_torch_and_keras_conventions_are_mirror_images():
    old_m, old_v = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    bm, bv = torch.tensor([5.0, -1.0]), torch.tensor([0.5, 2.0])
    t = update_running_stats(old_m, old_v, bm, bv, 0.1, convention="torch")
    k = update_running_stats(old_m, old_v, bm, bv, 0.9, convention="keras")
    for a, b in zip(t, k, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(t[0], 0.9 * old_m + 0.1 * bm)
    torch.testing.assert_close(t[1], 0.9 * old_v + 0.1 * bv)
    assert torch.equal(old_m, torch.tensor([1.0, 2.0])), "the update must be pure"
    with pytest.raises(ValueError, match="convention"):
        update_running_stats(old_m, old_v, bm, bv, 0.1, convention="flax")  # type: ignore[arg-type]


def test_cumulative_average_factor_and_bessel():
    assert running_average_factor(0.3, 7) == 0.3
    assert running_average_factor(None, 4) == 0.25
    torch.testing.assert_close(bessel_correction(torch.tensor(2.0), 5), torch.tensor(2.5))
    counts = torch.tensor([1.0, 4.0])
    torch.testing.assert_close(
        bessel_correction(torch.tensor([3.0, 3.0]), counts), torch.tensor([3.0, 4.0])
    )


def test_cumulative_running_stats_equal_plain_average_like_torch():
    """momentum=None: the running mean is the average of the batch means (torch.nn semantics)."""
    import normkit.nn as nkn

    ours, theirs = nkn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    means = []
    for i in range(5):
        x = torch.randn(10, 3) + i
        means.append(x.mean(0))
        ours(x)
        theirs(x)
    torch.testing.assert_close(ours.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked.item() == 5


def test_merges_with_fractional_counts_equal_the_weighted_moments():
    # counts are sums of sample weights, which may be below 1 (a one-row chunk of weight 0.26)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([0.26, 0.55, 0.1, 1.7, 0.3, 0.9], dtype=torch.float64)
    parts = []
    for a, b in ((0, 1), (1, 2), (2, 6)):
        wi, xi = w[a:b, None], x[a:b]
        n = wi.sum(0).expand(3)
        mean = (wi * xi).sum(0) / n
        parts.append(Moments(n, mean, (wi * (xi - mean) ** 2).sum(0)))
    total = w.sum()
    want_mean = (w[:, None] * x).sum(0) / total
    want_var = (w[:, None] * (x - want_mean) ** 2).sum(0) / total
    streamed = merge_moments([merge_moments(parts[:2]), parts[2]])  # partial_fit's order
    streamed_k = merge_stacked(_stack([merge_stacked(_stack(parts[:2])), parts[2]]))
    for merged in (merge_moments(parts), merge_stacked(_stack(parts)), streamed, streamed_k):
        torch.testing.assert_close(merged.mean, want_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged.var, want_var, rtol=1e-12, atol=1e-12)


def _stack(parts: list[Moments]) -> Moments:
    return Moments(*(torch.stack([getattr(p, f) for p in parts]) for f in ("count", "mean", "m2")))
