"""The rest of torch.nn's norm set: LocalResponseNorm, CrossMapLRN2d and the lazy layers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import normkit.nn as nkn
from normkit import functional as NF


def _x(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()


def _cross_map_oracle(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """Lua Torch's SpatialCrossMapLRN written out channel by channel (float64)."""
    h = (size - 1) // 2
    c = x.shape[1]
    out = []
    for i in range(c):
        lo, hi = max(0, i - h), min(c - 1, i + h)
        energy = (x[:, lo : hi + 1] ** 2).sum(1)
        out.append(x[:, i] * (k + alpha / size * energy) ** -beta)
    return torch.stack(out, 1)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 7, 4, 3), (2, 5, 3, 2, 2)])
def test_local_response_norm_matches_torch(size, shape):
    x = _x(shape)
    lrn = nkn.LocalResponseNorm(size, alpha=0.3, beta=0.6, k=1.5)
    y, ty = lrn(x), nn.LocalResponseNorm(size, alpha=0.3, beta=0.6, k=1.5)(x)
    torch.testing.assert_close(y, ty, rtol=1e-12, atol=1e-12)
    g = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ty, x, g)[0], rtol=1e-10, atol=1e-12
    )


def test_local_response_norm_edge_cases_as_torch():
    empty = torch.randn(0, 4, 3)
    assert NF.local_response_norm(empty, 3) is empty
    assert nn.functional.local_response_norm(empty, 3) is empty
    for bad in (torch.randn(4, 3), torch.randn(3)):
        with pytest.raises(ValueError, match="at least one position dim"):
            nkn.LocalResponseNorm(3)(bad)
        with pytest.raises(ValueError):
            nn.LocalResponseNorm(3)(bad)
    with pytest.raises(ValueError, match="size must be a positive int"):
        nkn.LocalResponseNorm(0)


def test_local_response_norm_keeps_channels_last():
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    y = nkn.LocalResponseNorm(3)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, nn.LocalResponseNorm(3)(x.contiguous()))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_cross_map_lrn2d_is_the_lua_formula_with_correct_gradients(size):
    x = _x((2, 7, 3, 3))
    m = nkn.CrossMapLRN2d(size, alpha=0.4, beta=0.75, k=2.0)
    torch.testing.assert_close(m(x), _cross_map_oracle(x, size, 0.4, 0.75, 2.0))
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_cross_map_lrn2d_matches_torch_where_torch_follows_the_formula(size):
    """torch 2.13 keeps channel 0 in every window: equal while every window holds channel 0
    (``C <= h + 1``), different after."""
    h = (size - 1) // 2
    ours, theirs = nkn.CrossMapLRN2d(size, 0.4, 0.75, 2.0), nn.CrossMapLRN2d(size, 0.4, 0.75, 2.0)
    x = _x((2, h + 1, 3, 3)).detach()
    torch.testing.assert_close(ours(x), theirs(x))
    x = _x((2, h + 3, 3, 3)).detach()
    assert not torch.allclose(ours(x), theirs(x))


def test_cross_map_lrn2d_needs_4d():
    with pytest.raises(ValueError, match="expects 4D input"):
        nkn.CrossMapLRN2d(3)(torch.randn(2, 3, 4))


LAZY = [
    (nkn.LazyBatchNorm1d, nn.LazyBatchNorm1d, nkn.BatchNorm1d, (6, 5)),
    (nkn.LazyBatchNorm2d, nn.LazyBatchNorm2d, nkn.BatchNorm2d, (4, 5, 3, 3)),
    (nkn.LazyBatchNorm3d, nn.LazyBatchNorm3d, nkn.BatchNorm3d, (2, 5, 2, 3, 3)),
    (nkn.LazyInstanceNorm1d, nn.LazyInstanceNorm1d, nkn.InstanceNorm1d, (3, 5, 7)),
    (nkn.LazyInstanceNorm2d, nn.LazyInstanceNorm2d, nkn.InstanceNorm2d, (3, 5, 4, 4)),
    (nkn.LazyInstanceNorm3d, nn.LazyInstanceNorm3d, nkn.InstanceNorm3d, (2, 5, 2, 3, 3)),
]


@pytest.mark.parametrize(
    "kw", [{}, {"bias": False}, {"affine": False, "track_running_stats": False}]
)
@pytest.mark.parametrize(("lazy", "torch_lazy", "becomes", "shape"), LAZY)
def test_lazy_layer_first_call_is_torchs(lazy, torch_lazy, becomes, shape, kw):
    m, t = lazy(**kw), torch_lazy(**kw)
    assert repr(m) == repr(t) and m.has_uninitialized_params() == t.has_uninitialized_params()
    for step in range(2):
        x = _x(shape, step).float()
        y, ty = m(x), t(x)
        torch.testing.assert_close(y, ty, rtol=1e-5, atol=1e-5)
        g = torch.randn(shape)
        torch.testing.assert_close(
            torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ty, x, g)[0], rtol=1e-4, atol=1e-5
        )
    assert type(m) is becomes and m.num_features == shape[1]
    # torch counts the features only when it has tensors to materialize (else num_features=0)
    assert t.num_features == (shape[1] if kw.get("affine", True) else 0)
    assert m.state_dict().keys() == t.state_dict().keys()
    for k, v in t.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("lazy", "torch_lazy", "becomes", "shape"), LAZY)
def test_lazy_layer_loads_torch_state_dicts(lazy, torch_lazy, becomes, shape):
    """Both ways: an uninitialized torch layer's state loads strictly, and a materialized one
    materializes ours with its feature count."""
    m = lazy()
    m.load_state_dict(torch_lazy().state_dict(), strict=True)
    assert m.has_uninitialized_params()
    trained = torch_lazy()
    trained(_x(shape).float())
    m.load_state_dict(trained.state_dict(), strict=True)
    y = m.eval()(_x(shape, 1).float())
    torch.testing.assert_close(y, trained.eval()(_x(shape, 1).float()))
    assert type(m) is becomes and m.num_features == shape[1]


def test_lazy_instance_norm_takes_channels_of_unbatched_input():
    m = nkn.LazyInstanceNorm1d()
    m(torch.randn(5, 9))
    assert m.num_features == 5 and m.weight.shape == (5,)


def test_lazy_batch_norm_feature_axis():
    m = nkn.LazyBatchNorm1d(axis=-1)
    y = m(torch.randn(8, 3, 6))
    assert m.num_features == 6 and m.axis == -1 and y.shape == (8, 3, 6)
