"""Functional API: random shapes/axes against numpy float64, numerics, bad input, nan_policy,
and the backend registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normkit
import normkit.functional as NF
import normkit.nn as nkn
from normkit.backends import Backend, registry

BACKENDS = normkit.backends.available()


def _np_norm(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


shapes = st.lists(st.integers(2, 5), min_size=2, max_size=5)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_batch_norm_any_axis_matches_numpy(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    backend = data.draw(st.sampled_from(BACKENDS))
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    c = shape[axis]
    w, b = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = NF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, axis=axis, backend=backend)
    ax = axis % len(shape)
    others = tuple(d for d in range(len(shape)) if d != ax)
    bshape = [1] * len(shape)
    bshape[ax] = c
    xn = x.numpy()
    want = _np_norm(xn, others, 1e-5) * w.numpy().reshape(bshape) + b.numpy().reshape(bshape)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-9, atol=1e-10)
    n = xn.size // c
    moved = np.moveaxis(xn, ax, 0).reshape(c, -1)
    np.testing.assert_allclose(rm.numpy(), 0.1 * moved.mean(1), rtol=1e-10)
    np.testing.assert_allclose(rv.numpy(), 0.9 + 0.1 * moved.var(1) * n / (n - 1), rtol=1e-10)
    y_eval = NF.batch_norm(x, rm, rv, w, b, False, axis=axis, backend=backend)
    want_eval = (xn - rm.numpy().reshape(bshape)) / np.sqrt(rv.numpy().reshape(bshape) + 1e-5)
    want_eval = want_eval * w.numpy().reshape(bshape) + b.numpy().reshape(bshape)
    np.testing.assert_allclose(y_eval.numpy(), want_eval, rtol=1e-9, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data())
def test_layer_and_rms_norm_match_numpy(shape, data):
    k = data.draw(st.integers(1, len(shape)))
    backend = data.draw(st.sampled_from(BACKENDS))
    x = torch.randn(shape, dtype=torch.float64) * 3 - 1
    ns = tuple(shape[-k:])
    w = torch.rand(ns, dtype=torch.float64) + 0.5
    axes = tuple(range(len(shape) - k, len(shape)))
    y = NF.layer_norm(x, ns, w, None, 1e-5, backend=backend)
    np.testing.assert_allclose(y.numpy(), _np_norm(x.numpy(), axes, 1e-5) * w.numpy(), rtol=1e-9)
    r = NF.rms_norm(x, ns, w, 1e-6, backend=backend)
    xn = x.numpy()
    want = xn / np.sqrt((xn**2).mean(axis=axes, keepdims=True) + 1e-6) * w.numpy()
    np.testing.assert_allclose(r.numpy(), want, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 4), per=st.integers(1, 3), data=st.data())
def test_group_norm_matches_numpy(n, groups, per, data):
    spatial = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    backend = data.draw(st.sampled_from(BACKENDS))
    c = groups * per
    x = torch.randn(n, c, *spatial, dtype=torch.float64)
    if groups and per * int(np.prod(spatial)) == 1:
        return  # one value per group: variance 0, still well defined but uninformative
    y = NF.group_norm(x, groups, None, None, 1e-5, backend=backend)
    g = x.numpy().reshape(n, groups, -1)
    want = _np_norm(g, (2,), 1e-5).reshape(x.shape)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nkn.BatchNorm2d(4), (32, 4, 8, 8)),
        (lambda: nkn.LayerNorm(256), (8, 256)),
        (lambda: nkn.GroupNorm(2, 4), (4, 4, 16, 16)),
        (lambda: nkn.InstanceNorm2d(4), (4, 4, 16, 16)),
        (lambda: nkn.LayerNorm2d(64), (4, 64, 4, 4)),
    ],
)
def test_float32_large_mean_normalizes_to_unit_std(layer, shape, backend):
    """Mean 1e4, std 1 in float32: catastrophic cancellation would give garbage here."""
    torch.manual_seed(0)
    m = layer()
    for mod in m.modules():
        if hasattr(mod, "backend"):
            mod.backend = backend
    x = torch.randn(shape) + 1e4
    y = m(x).double()
    assert abs(y.std().item() - 1) < 1e-3
    assert abs(y.mean().item()) < 1e-3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: nkn.BatchNorm2d(4)(torch.randn(2, 4, 3)), ValueError, "expects 4D input"),
        (lambda: nkn.BatchNorm2d(4)(torch.randn(2, 5, 3, 3)), ValueError, "expects 4 features"),
        (lambda: nkn.BatchNorm1d(4)(torch.randn(1, 4)), ValueError, "GroupNorm/LayerNorm"),
        (lambda: nkn.GroupNorm(3, 8), ValueError, "must divide"),
        (lambda: NF.group_norm(torch.randn(2, 8, 4), 3), ValueError, "pick a divisor of 8"),
        (lambda: nkn.LayerNorm(8)(torch.randn(3, 7)), ValueError, "trailing dims"),
        (lambda: nkn.RMSNorm((4, 8))(torch.randn(3, 8, 4)), ValueError, "trailing dims"),
        (
            lambda: nkn.BatchNorm1d(4)(torch.ones(8, 4, dtype=torch.long)),
            TypeError,
            "floating-point",
        ),
        (lambda: nkn.LayerNorm(4)(torch.ones(2, 4, dtype=torch.int32)), TypeError, "x.float"),
        (lambda: nkn.InstanceNorm2d(4, affine=True)(torch.randn(2, 3, 5, 5)), ValueError, "4 ch"),
        (lambda: nkn.GroupNorm(2, 4)(torch.randn(2, 6, 3)), ValueError, "num_channels"),
        (lambda: nkn.LayerNorm2d(4)(torch.randn(2, 3, 5, 5)), ValueError, "LayerNorm2d"),
        (
            lambda: NF.batch_norm(torch.randn(4, 3), None, None, training=False),
            ValueError,
            "training=True",
        ),
        (
            lambda: NF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), axis=5),
            ValueError,
            "out of range",
        ),
        (lambda: nkn.BatchNorm2d(4, backend="nope")(torch.randn(2, 4, 3, 3)), ValueError, "nope"),
        (lambda: nkn.BatchNorm1d(4, nan_policy="ignore"), ValueError, "nan_policy"),
    ],
)
def test_bad_input_gets_a_clear_error(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_instance_norm_needs_positions():
    with pytest.raises(ValueError, match="more than one spatial element"):
        NF.instance_norm(torch.randn(2, 3, 1))


# --------------------------------------------------------------------------- edge cases as torch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("call", "twin"),
    [
        (
            lambda x, be: NF.batch_norm(x, None, None, training=True, eps=0.0, backend=be),
            lambda x: torch.nn.functional.batch_norm(x, None, None, training=True, eps=0.0),
        ),
        (
            lambda x, be: NF.batch_norm(x, torch.zeros(4), torch.ones(4), eps=-1e-5, backend=be),
            lambda x: torch.nn.functional.batch_norm(x, torch.zeros(4), torch.ones(4), eps=-1e-5),
        ),
        (
            lambda x, be: NF.batch_renorm(
                x, torch.zeros(4), torch.ones(4), training=True, eps=0.0, backend=be
            ),
            lambda x: torch.nn.functional.batch_norm(x, None, None, training=True, eps=0.0),
        ),
        (
            lambda x, be: NF.ghost_batch_norm(
                x, None, None, training=True, eps=-1.0, virtual_batch_size=4, backend=be
            ),
            lambda x: torch.nn.functional.batch_norm(x, None, None, training=True, eps=-1.0),
        ),
    ],
    ids=["bn-train-eps0", "bn-eval-eps-negative", "renorm-eps0", "ghost-eps-negative"],
)
def test_batch_norm_eps_is_checked_as_torch_on_every_backend(call, twin, backend):
    # Large enough for auto to pick numba: the check must not depend on the backend that runs.
    x = torch.randn(256, 4, 32, 32)
    with pytest.raises(ValueError, match="eps"):
        twin(x)
    with pytest.raises(ValueError, match="eps=1e-5"):
        call(x, backend)
    # eps = 0 in eval is allowed, as in torch
    y = NF.batch_norm(x, torch.zeros(4), torch.ones(4), eps=0.0, backend=backend)
    torch.testing.assert_close(y, x)


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("batch_norm_train", lambda x: (None, None, 1e-5, 1)),
        ("batch_norm_eval", lambda x: (torch.zeros(6), torch.ones(6), None, None, 1e-5, 1)),
        ("layer_norm", lambda x: ((x.shape[-1],), torch.ones(x.shape[-1]), None, 1e-5)),
        ("rms_norm", lambda x: ((x.shape[-1],), None, 1e-5)),
        ("group_norm", lambda x: (3, torch.ones(6), torch.zeros(6), 1e-5)),
        ("instance_norm", lambda x: (None, None, 1e-5)),
        ("add_layer_norm", lambda x: (x, (x.shape[-1],), None, None, 1e-5)),
        ("add_rms_norm", lambda x: (x, (x.shape[-1],), None, 1e-5)),
    ],
)
@pytest.mark.parametrize("shape", [(0, 6, 5), (2, 6, 0), (0, 6, 0, 3)], ids=str)
def test_reference_backend_accepts_empty_inputs(op, args, shape):
    x = torch.randn(shape, requires_grad=True)
    out = normkit.backends.get("reference").ops[op](x, *args(x))
    y = out[0] if isinstance(out, tuple) else out
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_as_torch(backend):
    x = torch.randn(0, 4, 5)
    rm, rv, nbt = torch.randn(4), torch.rand(4) + 0.5, torch.tensor(3)
    before = rm.clone(), rv.clone()
    y = NF.batch_norm(x, rm, rv, training=True, num_batches_tracked=nbt, backend=backend)
    assert y.shape == x.shape
    # torch.nn.BatchNorm on an empty batch: running statistics untouched, the batch counted
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1]) and nbt.item() == 4
    assert NF.instance_norm(x, backend=backend).shape == x.shape  # no IndexError
    assert NF.group_norm(torch.randn(0, 4, 5), 2, backend=backend).shape == (0, 4, 5)
    y, s = NF.add_rms_norm(x, x, 5, backend=backend)
    assert y.shape == s.shape == x.shape
    with pytest.raises(ValueError, match="unknown backend"):
        NF.layer_norm(x, 5, backend="no-such-backend")


def test_instance_norm_empty_batch_running_stats_follow_nan_policy():
    # torch writes NaN into the running statistics of an empty batch ("propagate" does the
    # same); the default policy keeps them.
    x = torch.randn(0, 3, 5)
    twin = torch.nn.InstanceNorm1d(3, track_running_stats=True)
    twin(x)
    rm, rv = torch.zeros(3), torch.ones(3)
    NF.instance_norm(x, rm, rv, nan_policy="propagate")
    torch.testing.assert_close(rm, twin.running_mean, equal_nan=True)
    assert torch.isnan(rm).all()
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        NF.instance_norm(x, rm, rv)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


# --------------------------------------------------------------------------- nan_policy


def _poisoned() -> torch.Tensor:
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    return x


def test_nan_batch_is_skipped_by_default_and_warns():
    bn = nkn.BatchNorm1d(3)
    bn(torch.randn(8, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        bn(_poisoned())
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert bn.num_batches_tracked.item() == 1


def test_nan_policy_raise_and_propagate():
    with pytest.raises(FloatingPointError, match="nan_policy='skip'"):
        nkn.BatchNorm1d(3, nan_policy="raise")(_poisoned())
    bn, twin = nkn.BatchNorm1d(3, nan_policy="propagate"), torch.nn.BatchNorm1d(3)
    x = _poisoned()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x)
    twin(x)
    torch.testing.assert_close(bn.running_mean, twin.running_mean, equal_nan=True)
    assert torch.isnan(bn.running_mean[1])


# --------------------------------------------------------------------------- registry


def test_registry_lists_and_resolves():
    assert "reference" in BACKENDS and "torch" in BACKENDS
    x = torch.randn(4, 8)
    assert normkit.backends.resolve("layer_norm", x, "reference").name == "reference"
    assert normkit.backends.resolve("layer_norm", x).name in BACKENDS
    with pytest.raises(ValueError, match="unknown backend"):
        normkit.backends.get("cuda-magic")


def test_registry_rejects_duplicates_and_explains_unsupported_inputs():
    with pytest.raises(ValueError, match="already registered"):
        normkit.backends.register(Backend(name="torch", ops={}))
    picky = Backend(
        name="test-picky",
        ops={"layer_norm": lambda *a: None},
        supports=lambda op, x: None if x.dtype == torch.float64 else "float64 only",
    )
    normkit.backends.register(picky, replace=True)
    try:
        with pytest.raises(ValueError, match="float64 only"):
            NF.layer_norm(torch.randn(2, 4), (4,), backend="test-picky")
        with pytest.raises(ValueError, match="does not implement"):
            NF.rms_norm(torch.randn(2, 4, dtype=torch.float64), (4,), backend="test-picky")
    finally:
        registry._REGISTRY.pop("test-picky")


def test_get_norm_builds_every_registered_layer():
    assert isinstance(nkn.get_norm("bn2d", 8), nkn.BatchNorm2d)
    assert isinstance(nkn.get_norm("LayerNorm", 8), nkn.LayerNorm)
    gn = nkn.get_norm("gn", 48)
    assert isinstance(gn, nkn.GroupNorm) and gn.num_groups == 24
    assert nkn.get_norm("gn", 64, num_groups=4).num_groups == 4
    with pytest.raises(ValueError, match="unknown norm"):
        nkn.get_norm("fancy", 8)
    for name in nkn.norm_names():
        assert isinstance(nkn.get_norm(name, 8), torch.nn.Module)
