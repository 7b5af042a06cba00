"""The layers' shared base against torch.nn: constructors, state_dicts, repr, old checkpoints."""

from __future__ import annotations

import inspect
from collections import OrderedDict

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.nn import catalog

SIGNATURE_ROWS = [r for r in catalog.CATALOG if r.constructor_twin is not None]


@pytest.mark.parametrize("row", SIGNATURE_ROWS, ids=lambda r: r.qualname.rpartition(".")[2])
def test_constructor_takes_every_torch_argument_in_order(row: catalog.NormKind):
    """Every argument of the torch twin, same kind, order and default; normkit's extras come
    after them, keyword-only."""
    theirs = list(inspect.signature(row.constructor_twin.__init__).parameters.values())[1:]
    ours = list(inspect.signature(row.cls.__init__).parameters.values())[1:]
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    for t, o in zip(theirs, ours, strict=False):
        assert o.kind == t.kind, f"{o.name}: {o.kind} vs torch's {t.kind}"
        assert o.default == t.default, f"{o.name}: default {o.default!r} vs {t.default!r}"
    for extra in ours[len(theirs) :]:
        assert extra.kind == inspect.Parameter.KEYWORD_ONLY, f"{extra.name} must be keyword-only"


# (normkit class, torch class, constructor args, input shape) with bias=False
NO_BIAS = [
    (nkn.BatchNorm1d, nn.BatchNorm1d, (4,), {}, (6, 4)),
    (nkn.BatchNorm2d, nn.BatchNorm2d, (4,), {}, (3, 4, 5, 5)),
    (nkn.BatchNorm3d, nn.BatchNorm3d, (4,), {}, (2, 4, 3, 3, 3)),
    (nkn.SyncBatchNorm, nn.BatchNorm2d, (4,), {}, (3, 4, 5, 5)),
    (nkn.GroupNorm, nn.GroupNorm, (2, 4), {}, (3, 4, 5, 5)),
    (nkn.InstanceNorm1d, nn.InstanceNorm1d, (4,), {"affine": True}, (3, 4, 7)),
    (
        nkn.InstanceNorm2d,
        nn.InstanceNorm2d,
        (4,),
        {"affine": True, "track_running_stats": True},
        (3, 4, 5, 5),
    ),
    (nkn.InstanceNorm3d, nn.InstanceNorm3d, (4,), {"affine": True}, (2, 4, 3, 3, 3)),
    (nkn.LayerNorm, nn.LayerNorm, (5,), {}, (3, 4, 5)),
]


@pytest.mark.filterwarnings("ignore:SyncBatchNorm. torch.distributed is not initialized")
@pytest.mark.parametrize(("ours", "theirs", "args", "kw", "shape"), NO_BIAS)
def test_bias_false_matches_torch(ours, theirs, args, kw, shape):
    """``bias=False`` as torch: no bias parameter, a torch state_dict loads strictly, the same
    outputs, gradients and running buffers."""
    t = theirs(*args, bias=False, **kw)
    with torch.no_grad():
        t.weight.uniform_(0.5, 1.5)
    m = ours(*args, bias=False, **kw)
    assert m.bias is None and set(m.state_dict()) == set(t.state_dict())
    m.load_state_dict(t.state_dict(), strict=True)
    for train in (True, False):
        m.train(train), t.train(train)
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x = x.float().requires_grad_()
        y, ty = m(x), t(x)
        torch.testing.assert_close(y, ty, rtol=1e-4, atol=1e-5)
        (gx,) = torch.autograd.grad((y * y).sum(), x)
        (tgx,) = torch.autograd.grad((ty * ty).sum(), x)
        torch.testing.assert_close(gx, tgx, rtol=1e-4, atol=1e-5)
    for k, v in t.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: nkn.BatchNorm2d(4), lambda: nn.BatchNorm2d(4)),
        (lambda: nkn.BatchNorm1d(4, bias=False), lambda: nn.BatchNorm1d(4, bias=False)),
        (lambda: nkn.InstanceNorm2d(4, affine=True), lambda: nn.InstanceNorm2d(4, affine=True)),
        (lambda: nkn.GroupNorm(2, 4, bias=False), lambda: nn.GroupNorm(2, 4, bias=False)),
        (lambda: nkn.LayerNorm((3, 4)), lambda: nn.LayerNorm((3, 4))),
        (lambda: nkn.RMSNorm(4, eps=1e-6), lambda: nn.RMSNorm(4, eps=1e-6)),
        (lambda: nkn.SyncBatchNorm(4, momentum=None), lambda: nn.SyncBatchNorm(4, momentum=None)),
    ],
)
def test_repr_is_torchs(ours, theirs):
    assert repr(ours()) == repr(theirs())


def test_normkit_options_print_after_torchs():
    assert repr(nkn.BatchNorm(4, axis=-1, backend="torch")).endswith(
        "track_running_stats=True, axis=-1, backend='torch')"
    )


def test_device_and_dtype_reach_every_tensor():
    m = nkn.BatchNorm2d(4, device="cpu", dtype=torch.float64)
    assert {t.dtype for t in (m.weight, m.bias, m.running_mean, m.running_var)} == {torch.float64}
    assert m.num_batches_tracked.dtype == torch.long
    gn = nkn.GroupNorm(2, 4, dtype=torch.float16, bias=False)
    assert gn.weight.dtype == torch.float16 and gn.bias is None


def test_reset_like_torch():
    m, t = nkn.BatchNorm1d(3), nn.BatchNorm1d(3)
    for mod in (m, t):
        with torch.no_grad():
            mod.weight.fill_(2)
        mod(torch.randn(8, 3))
        mod.reset_running_stats()
        assert mod.num_batches_tracked.item() == 0 and mod.weight[0].item() == 2
        mod.reset_parameters()
    for k, v in t.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def _versioned(state: dict, version: int | None) -> OrderedDict:
    out = OrderedDict(state)
    out._metadata = OrderedDict({"": {} if version is None else {"version": version}})  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("version", [None, 1])
def test_checkpoint_without_num_batches_tracked_loads_as_torch(version):
    """Checkpoints older than version 2 have no ``num_batches_tracked``: the layer keeps its own."""
    saved = {k: v for k, v in nn.BatchNorm2d(4).state_dict().items() if "num_batches" not in k}
    m, t = nkn.BatchNorm2d(4), nn.BatchNorm2d(4)
    m.num_batches_tracked.fill_(5), t.num_batches_tracked.fill_(5)
    m.load_state_dict(_versioned(saved, version))
    t.load_state_dict(_versioned(saved, version))
    assert m.num_batches_tracked.item() == t.num_batches_tracked.item() == 5
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        nkn.BatchNorm2d(4).load_state_dict(_versioned(saved, 2))


def test_unversioned_instance_norm_with_running_stats_is_reported_as_torch():
    saved = nn.InstanceNorm2d(4, track_running_stats=True).state_dict()
    for layer in (nn.InstanceNorm2d(4), nkn.InstanceNorm2d(4)):
        with pytest.raises(RuntimeError, match="running_mean"):
            layer.load_state_dict(_versioned(saved, None))
        layer.load_state_dict(
            _versioned(saved, 1), strict=False
        )  # versioned: plain unexpected keys


def test_norm_act_layers_keep_the_plain_state_dict():
    t = nn.BatchNorm2d(4, bias=False)
    m = nkn.BatchNormAct2d(4, bias=False, act="gelu")
    m.load_state_dict(t.state_dict(), strict=True)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m.eval()(x), nn.functional.gelu(t.eval()(x)))
