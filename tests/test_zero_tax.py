"""The fast path of the stateful norms: torch's fused running-statistics update under normkit's
guarantees (NaN-safe running statistics, memory format, torch.nn parity), the op count against
torch.nn, and the measured auto table with its cached resolution."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.backends import registry
from normkit.compare import count_ops

CL = torch.channels_last


def _pair(ours: nn.Module, theirs: nn.Module) -> tuple[nn.Module, nn.Module]:
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _steps(ours: nn.Module, theirs: nn.Module, shape, *, fmt=None, steps=3) -> None:
    """A few training steps of both on the same inputs: outputs, grads and buffers agree."""
    for seed in range(steps):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x = (x * 3 + 1).to(next(ours.parameters()).dtype)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        outs = []
        for m in (ours, theirs):
            xi = x.detach().clone().requires_grad_()
            y = m(xi)
            y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
            outs.append((y, xi.grad, [p.grad for p in m.parameters()]))
        (y1, g1, p1), (y2, g2, p2) = outs
        torch.testing.assert_close(y1, y2)
        torch.testing.assert_close(g1, g2)
        for a, b in zip(p1, p2, strict=True):
            torch.testing.assert_close(a, b)
        if fmt is not None:
            assert y1.is_contiguous(memory_format=fmt)
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    ("ours", "theirs", "shape", "fmt"),
    [
        (nkn.BatchNorm1d, nn.BatchNorm1d, (16, 5), None),
        (nkn.BatchNorm1d, nn.BatchNorm1d, (8, 5, 7), None),
        (nkn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 6, 7), None),
        (nkn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 6, 7), CL),
        (nkn.BatchNorm3d, nn.BatchNorm3d, (2, 5, 3, 4, 6), torch.channels_last_3d),
    ],
)
def test_fused_batch_norm_matches_torch_nn(ours, theirs, shape, fmt, momentum, dtype):
    a, b = _pair(ours(5, momentum=momentum, dtype=dtype), theirs(5, momentum=momentum, dtype=dtype))
    _steps(a, b, shape, fmt=fmt)
    a.eval(), b.eval()
    x = torch.randn(shape, dtype=dtype)
    torch.testing.assert_close(a(x), b(x))


def test_fused_batch_norm_without_running_stats_matches_torch_nn():
    a, b = _pair(
        nkn.BatchNorm2d(5, track_running_stats=False), nn.BatchNorm2d(5, track_running_stats=False)
    )
    _steps(a, b, (4, 5, 3, 3))


@pytest.mark.parametrize("fmt", [None, CL])
def test_fused_instance_norm_running_stats_match_torch_nn(fmt):
    kw = {"affine": True, "track_running_stats": True}
    a, b = _pair(nkn.InstanceNorm2d(5, **kw), nn.InstanceNorm2d(5, **kw))
    _steps(a, b, (4, 5, 6, 7), fmt=fmt)


@pytest.mark.parametrize(
    "poison",
    [float("nan"), float("inf"), 3e19],  # 3e19: finite input whose float32 variance overflows
)
@pytest.mark.parametrize(
    "layer",
    [
        lambda: nkn.BatchNorm2d(3),
        lambda: nkn.BatchNorm2d(3, momentum=None),
        lambda: nkn.InstanceNorm2d(3, track_running_stats=True),
        lambda: nkn.BatchNorm2d(200),  # buffers above the guard's small-buffer size
    ],
)
def test_fused_update_skips_a_non_finite_batch_bitwise(layer, poison):
    m = layer()
    c = m.num_features
    m(torch.randn(4, c, 5, 5))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, c, 5, 5, requires_grad=True)
    with torch.no_grad():
        x[1, c - 1, 0, :2] = poison
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        m(x).sum().backward()  # the restored buffers keep the graph that saved them valid
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    m(torch.randn(4, c, 5, 5))  # a later finite batch updates again
    assert not torch.equal(m.running_mean, before["running_mean"])


def test_fused_update_raise_and_propagate():
    x = torch.randn(4, 3, 5, 5)
    x[0, 1, 0, 0] = float("nan")
    strict = nkn.BatchNorm2d(3, nan_policy="raise")
    before = strict.running_mean.clone()
    with pytest.raises(FloatingPointError, match="nan_policy='skip'"):
        strict(x)
    assert torch.equal(strict.running_mean, before)
    assert strict.num_batches_tracked.item() == 0
    loose, twin = nkn.BatchNorm2d(3, nan_policy="propagate"), nn.BatchNorm2d(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose(x)
    twin(x)
    torch.testing.assert_close(loose.running_var, twin.running_var, equal_nan=True)
    assert loose.num_batches_tracked.item() == 1


def test_half_input_keeps_float32_statistics():
    m = nkn.BatchNorm2d(4)
    x = torch.randn(8, 4, 5, 5) * 4 + 2
    y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16 and m.running_mean.dtype == torch.float32
    ref = nn.BatchNorm2d(4)
    ref(x.bfloat16().float())
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)


# --------------------------------------------------------------------------- ATen op counts


def _fwd_bwd_ops(m: nn.Module, x: torch.Tensor) -> int:
    xi = x.detach().requires_grad_()
    g = torch.ones(x.shape)
    m(xi).backward(g)  # warm (first calls may resolve or allocate)
    m.zero_grad(set_to_none=True)
    xi.grad = None
    return sum(count_ops(lambda: m(xi).backward(g)).values())


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("ours", "theirs", "shape"),
    [
        (lambda: nkn.BatchNorm1d(8), lambda: nn.BatchNorm1d(8), (16, 8)),
        (lambda: nkn.BatchNorm2d(8), lambda: nn.BatchNorm2d(8), (4, 8, 5, 5)),
        (
            lambda: nkn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            lambda: nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            (4, 8, 5, 5),
        ),
        (lambda: nkn.LayerNorm(8), lambda: nn.LayerNorm(8), (4, 5, 8)),
        (lambda: nkn.GroupNorm(2, 8), lambda: nn.GroupNorm(2, 8), (4, 8, 5, 5)),
    ],
)
def test_aten_ops_per_call_at_most_torch_nn_plus_two(ours, theirs, shape, train):
    x = torch.randn(shape)
    a, b = ours().train(train), theirs().train(train)
    assert _fwd_bwd_ops(a, x) <= _fwd_bwd_ops(b, x) + 2


# --------------------------------------------------------------------------- the auto table


@pytest.fixture
def table():
    yield registry.set_auto_table
    registry.set_auto_table(None)


def test_auto_follows_the_measured_table(table):
    x = torch.empty(64, 1024)  # size class 17
    row = {"op": "layer_norm", "dir": "fwd", "device": "cpu", "dtype": "float32"}
    table([{**row, "layout": "contiguous", "numel": 1 << 16, "backend": "reference"}])
    assert registry.resolve("layer_norm", x).name == "reference"
    assert registry.resolve("layer_norm", torch.empty(8, 1024)).name == "torch"  # below: torch
    assert registry.resolve("layer_norm", x.t()).name == "torch"  # layout never measured
    assert registry.resolve("rms_norm", x).name == "torch"  # op never measured
    xg = x.requires_grad_()
    assert registry.resolve("layer_norm", xg).name == "torch"  # fwd+bwd never measured
    with torch.no_grad():
        assert registry.resolve("layer_norm", xg).name == "reference"
    table([{**row, "layout": "contiguous", "numel": 1 << 16, "backend": "no-such-backend"}])
    assert registry.resolve("layer_norm", x).name == "torch"


def test_devices_without_measurements_use_the_priority_walk(table):
    table([])
    x = torch.empty(4, 8)
    assert registry.resolve("layer_norm", x).name == "torch"  # the walk: torch prefers it


def test_resolution_is_cached_per_signature(table):
    table(None)
    first = registry.resolve("layer_norm", torch.randn(8, 16))
    entries = len(registry._RESOLVED)
    assert registry.resolve("layer_norm", torch.randn(9, 16)) is first  # same size class
    assert len(registry._RESOLVED) == entries
    registry.resolve("layer_norm", torch.randn(800, 16))  # another size class: a new entry
    assert len(registry._RESOLVED) == entries + 1


@pytest.mark.parametrize("dynamic", [False, True])
def test_auto_layers_compile_fullgraph_without_warnings(dynamic, table):
    table(None)  # loaded before tracing, as after any eager call
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nkn.BatchNorm2d(8), nkn.GroupNorm(2, 8))
    twin = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GroupNorm(2, 8))
    twin.load_state_dict(model.state_dict())
    fn = torch.compile(model, backend="eager", fullgraph=True, dynamic=dynamic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in (4, 6):
            x = torch.randn(n, 3, 7, 7)
            torch.testing.assert_close(fn(x), twin(x))
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)


def test_ghost_closed_form_update_equals_sequential_updates_and_skips_per_virtual_batch():
    ours = nkn.GhostBatchNorm1d(3, virtual_batch_size=4).double()
    bn = nn.BatchNorm1d(3).double()
    x = torch.randn(16, 3, dtype=torch.float64) * 2 + 1
    ours(x)
    for chunk in x.split(4):
        bn(chunk)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(bn, name))
    x[5, 1] = float("nan")  # the second of four virtual batches
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        ours(x)
    for i, chunk in enumerate(x.split(4)):
        if i != 1:
            bn(chunk)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(bn, name))
    assert ours.num_batches_tracked.item() == 4 + 3


@pytest.mark.parametrize("shape", [(6, 5, 4), (4, 3, 3, 5)], ids=["nlc", "nhwc"])
def test_fused_native_path_keeps_keras_statistics_and_the_layout(shape):
    """The fused native path (CPU float32, features last, Keras' momentum convention through
    the n/(n−1) scaling) against the moments computed here: moving mean and the biased moving
    variance, the output contiguous like the input; a NaN batch leaves them untouched."""
    bn = nkn.BatchNormalization(momentum=0.9)
    x = torch.randn(shape) * 3 + 2
    y = bn(x)
    assert y.is_contiguous()
    dims = tuple(range(x.ndim - 1))
    var, mean = torch.var_mean(x.double(), dims, correction=0)
    torch.testing.assert_close(bn.running_mean, (0.1 * mean).float())
    torch.testing.assert_close(bn.running_var, (0.9 + 0.1 * var).float())
    before = [t.clone() for t in (bn.running_mean, bn.running_var)]
    x[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        bn(x)
    torch.testing.assert_close(bn.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, before[1], rtol=0, atol=0)
