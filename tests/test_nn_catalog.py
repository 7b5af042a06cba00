"""Walk the catalog: every row's every derived view (get_norm, freeze, sync, fold, convert,
diagnostics) says what the row says."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import normkit.nn as nkn
from normkit.diagnostics import check_model, is_bn_like, is_norm_like
from normkit.inference import TWINS, convert, fold_batchnorm
from normkit.inference.fold import _extractor, foldable_norm_types
from normkit.nn import _catalog, catalog

CLASS_ROWS = [r for r in catalog.CATALOG if isinstance(r.cls, type)]
C = 4


def _name(row: catalog.NormKind) -> str:
    return row.qualname.replace("normkit.nn.", "nk.").replace("torch.nn.modules.", "torch.")


def _instance(row: catalog.NormKind) -> nn.Module:
    """A small instance of the row's class with C features."""
    if row.names:
        return row.build(C)
    cls = row.cls
    if cls is nkn.ConditionalBatchNorm2d:
        return cls(C, num_classes=3)
    if cls is nkn.AdaIN:
        return cls()
    if cls is nkn.EvoNorm2dS0:
        return cls(C, groups=2)
    if cls in (nn.GroupNorm,):
        return cls(2, C)
    if cls in (nn.LocalResponseNorm, nn.CrossMapLRN2d):
        return cls(3)
    if cls.__name__.startswith("Lazy"):
        return cls()
    return cls(C)


def _rank(m: nn.Module) -> int:
    name = type(m).__name__
    if name.endswith("1d") or isinstance(m, nkn.BatchNormalization):
        return 2
    return 5 if name.endswith("3d") else 4


def _producer(rank: int) -> nn.Module:
    return {2: nn.Linear(3, C), 4: nn.Conv2d(3, C, 1), 5: nn.Conv3d(3, C, 1)}[rank]


def _randomized(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (*m.parameters(), *m.buffers()):
            if not is_lazy(t) and t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return m


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_lookup_finds_the_row(row):
    assert catalog.lookup(row.cls) is row
    assert catalog.lookup(row.cls, exact=True) is row
    m = _instance(row)
    assert catalog.lookup(m) is row and catalog.family(m) == row.family and catalog.is_norm(m)

    class Sub(row.cls):  # a user's subclass: the base's row, but not an exact match
        pass

    assert catalog.lookup(Sub) is row and catalog.lookup(Sub, exact=True) is None


@pytest.mark.parametrize("row", [r for r in catalog.CATALOG if r.names], ids=_name)
def test_get_norm_builds_the_row(row):
    for name in row.names:
        layer = nkn.get_norm(name.upper(), C)
        assert type(layer) is row.cls
        assert name in nkn.norm_names()


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_freeze_follows_the_row(row):
    m = _instance(row)
    if row.family != "batch":
        assert nkn.freeze_batchnorm(m) is m
        return
    if row.cls.__name__.startswith("Lazy"):
        with pytest.raises(ValueError, match="has not seen an input yet"):
            nkn.freeze_batchnorm(m)
        return
    frozen = nkn.freeze_batchnorm(_randomized(m))
    assert type(frozen) is (row.frozen or nkn.FrozenBatchNorm)
    x = torch.randn(2, C, *[3] * (_rank(m) - 2))
    if getattr(m, "axis", 1) != 1:
        x = x.movedim(1, -1)
    with torch.no_grad():
        torch.testing.assert_close(frozen.train()(x), m.eval()(x))
    back = nkn.unfreeze_batchnorm(frozen)
    assert back is m


@pytest.mark.filterwarnings("ignore:SyncBatchNorm. torch.distributed is not initialized")
@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_convert_sync_follows_the_row(row):
    m = _instance(row)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = nkn.convert_sync_batchnorm(m)
    warned = any("no synchronized version" in str(w.message) for w in caught)
    if row.sync is not None:
        assert type(new) is row.sync and not warned
        assert new.weight is m.weight and new.running_mean is m.running_mean
    else:
        assert new is m
        assert warned == (row.family == "batch" and not row.local)


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_fold_follows_the_row(row):
    m = _instance(row)
    assert (_extractor(m) is not None) == (row.fold is not None)
    assert (row.cls in foldable_norm_types()) == (row.fold is not None)
    if row.fold is None:
        return
    rank = _rank(m)
    model = nn.Sequential(_producer(rank), _randomized(m)).eval()
    x = torch.randn(2, 3, *[3] * (rank - 2))
    folded, report = fold_batchnorm(model, return_report=True)
    assert len(report.folded) == 1, str(report)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_twins_are_the_rows_with_a_torch_twin():
    rows = {(r.torch_twin, r.cls) for r in catalog.CATALOG if r.torch_twin is not None}
    assert {(t.torch_cls, t.normkit_cls) for t in TWINS} == rows


@pytest.mark.parametrize("row", [r for r in CLASS_ROWS if r.torch_twin], ids=_name)
def test_convert_follows_the_row(row):
    ours = _randomized(_instance(row))
    theirs = convert(ours, "torch", inplace=True)  # lazy layers cannot be deep-copied
    assert type(theirs) is row.torch_twin
    back = convert(theirs, "normkit", inplace=True)
    assert type(back) is row.cls
    for k, v in ours.state_dict().items():
        assert is_lazy(v) or torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_diagnostics_detect_the_row(row):
    m = _instance(row)
    assert is_norm_like(m)
    assert is_bn_like(m) == (row.family == "batch")
    leaf = next(m.children(), None) is None  # the checks look at leaf modules
    if row.family == "batch" and leaf and not row.cls.__name__.startswith("Lazy"):
        rank = _rank(m)
        model = nn.Sequential(_producer(rank), m)
        findings = check_model(model, torch.randn(2, 3, *[3] * (rank - 2)))
        assert "bias-before-norm" in {f.code for f in findings}


def test_family_of_classes_outside_the_catalog_follows_torch_conventions():
    class MyBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.momentum = 0.1
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, torch.zeros(2))

    class MyFrozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(2))
            self.register_buffer("running_var", torch.ones(2))

    class ScaleNorm(nn.Module):
        pass

    assert catalog.family(MyBN()) == "batch"
    assert catalog.family(MyFrozen()) == "frozen_batch"
    assert catalog.family(ScaleNorm()) == "other"
    assert catalog.family(nn.Linear(2, 2)) is None and not catalog.is_norm(nn.ReLU())


def test_classes_of_other_libraries_are_found_by_name():
    frozen_bn = type("FrozenBatchNorm2d", (nn.Module,), {"__module__": "torchvision.ops.misc"})
    rms = type("RmsNorm", (nn.Module,), {"__module__": "timm.layers.norm"})
    assert catalog.family(frozen_bn()) == "frozen_batch"
    assert catalog.family(rms()) == "rms"


def test_register_norm_adds_a_row(monkeypatch):
    monkeypatch.setattr(_catalog, "CATALOG", list(catalog.CATALOG))
    _catalog._index.cache_clear()
    try:

        class ScaledLayerNorm(nkn.LayerNorm):
            pass

        nkn.register_norm("sln", ScaledLayerNorm, aliases=("scaledln",), family="layer")
        assert type(nkn.get_norm("ScaledLN", 8)) is ScaledLayerNorm
        assert catalog.lookup(ScaledLayerNorm).names == ("sln", "scaledln")
        nkn.register_norm("twice", lambda n, **kw: nkn.LayerNorm(n, **kw))
        assert catalog.lookup(nkn.get_norm("twice", 4)).cls is nkn.LayerNorm
        with pytest.raises(ValueError, match="'gn' is already registered"):
            nkn.register_norm("gn", nkn.GroupNorm)
    finally:
        monkeypatch.undo()
        _catalog._index.cache_clear()
    assert "sln" not in nkn.norm_names()


# --------------------------------------------------------------------------- empty batches

#: A valid input of N = 0 for each torch twin (1d batch norms: both ranks they accept).
EMPTY_SHAPES: dict[type[nn.Module], list[tuple[int, ...]]] = {
    nn.BatchNorm1d: [(0, C), (0, C, 7)],
    nn.BatchNorm2d: [(0, C, 5, 5)],
    nn.BatchNorm3d: [(0, C, 3, 3, 3)],
    nn.SyncBatchNorm: [(0, C, 5, 5)],
    nn.LazyBatchNorm1d: [(0, C), (0, C, 7)],
    nn.LazyBatchNorm2d: [(0, C, 5, 5)],
    nn.LazyBatchNorm3d: [(0, C, 3, 3, 3)],
    nn.InstanceNorm1d: [(0, C, 7)],
    nn.InstanceNorm2d: [(0, C, 5, 5)],
    nn.InstanceNorm3d: [(0, C, 3, 3, 3)],
    nn.LazyInstanceNorm1d: [(0, C, 7)],
    nn.LazyInstanceNorm2d: [(0, C, 5, 5)],
    nn.LazyInstanceNorm3d: [(0, C, 3, 3, 3)],
    nn.GroupNorm: [(0, C, 5, 5), (0, C)],
    nn.LayerNorm: [(0, 3, C), (0, C)],
    nn.RMSNorm: [(0, 3, C), (0, C)],
    nn.LocalResponseNorm: [(0, C, 5, 5), (0, C, 7)],
    nn.CrossMapLRN2d: [(0, C, 5, 5)],
}
TWIN_ROWS = [r for r in CLASS_ROWS if r.constructor_twin is not None]


def _oracle(row: catalog.NormKind, m: nn.Module) -> nn.Module:
    """The torch twin built with the options of ``m`` (read back from its attributes).

    torch's SyncBatchNorm trains only on a GPU within a process group; on one process it is
    BatchNorm, which normkit's falls back to, so BatchNorm2d is its oracle here."""
    twin = row.constructor_twin
    params = list(inspect.signature(twin.__init__).parameters)[1:]
    kw = {p: getattr(m, p) for p in params if p not in ("bias", "device", "dtype", "process_group")}
    if "bias" in params:
        kw["bias"] = m.bias is not None
    kw.pop("process_group", None)
    return (nn.BatchNorm2d if twin is nn.SyncBatchNorm else twin)(**kw)


RESIDUAL = (nkn.AddLayerNorm, nkn.AddRMSNorm)


def _randomize_running_stats(ours: nn.Module, theirs: nn.Module) -> dict[str, torch.Tensor]:
    """Give both layers the same random running statistics; return ours as they are now."""
    before = {}
    for name in ("running_mean", "running_var"):
        t, o = getattr(theirs, name, None), getattr(ours, name, None)
        assert (t is None) == (o is None), name
        if t is not None and not is_lazy(t):
            with torch.no_grad():
                t.copy_(torch.rand(t.shape) + 0.5)
                o.copy_(t)
            before[name] = o.clone()
    return before


#: Constructor options tried beside the defaults, where the torch twin takes them.
EMPTY_OPTIONS = [
    {},
    {"momentum": None},
    {"track_running_stats": False},
    {"affine": True, "track_running_stats": True},
    {"elementwise_affine": False},
]


def _options(row: catalog.NormKind) -> list[dict]:
    """The options of EMPTY_OPTIONS the row's torch twin and the row itself accept (BatchRenorm
    refuses track_running_stats=False)."""
    params = inspect.signature(row.constructor_twin.__init__).parameters
    accepted = []
    for options in (o for o in EMPTY_OPTIONS if set(o) <= set(params)):
        try:
            row.build(C, **options)
        except ValueError:
            continue
        accepted.append(options)
    return accepted


@pytest.mark.filterwarnings("ignore:SyncBatchNorm. torch.distributed is not initialized")
@pytest.mark.filterwarnings("ignore:.*left unchanged:RuntimeWarning")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("row", "options"),
    [(r, o) for r in TWIN_ROWS for o in _options(r)],
    ids=lambda v: _name(v) if isinstance(v, catalog.NormKind) else ",".join(v) or "defaults",
)
def test_empty_batch_as_the_torch_twin(row, options, train):
    """N = 0 as torch: the same output shape and dtype (or the same exception type), running
    statistics untouched and ``num_batches_tracked`` as torch counts it.

    torch writes NaN into the running statistics of an instance norm on an empty batch; normkit's
    default ``nan_policy="skip"`` keeps them (tests/test_functional.py covers "propagate").
    A residual norm (``AddLayerNorm(x, r)``) is compared with its twin on ``x + r``."""
    for shape in EMPTY_SHAPES[row.constructor_twin]:
        ours = row.build(C, **options) if options else _instance(row)
        theirs = _oracle(row, ours)
        before = _randomize_running_stats(ours, theirs)
        counted = getattr(ours, "num_batches_tracked", None)
        counted = None if counted is None else counted.clone()
        ours.train(train), theirs.train(train)
        x = torch.randn(shape)
        residual = isinstance(ours, RESIDUAL)
        try:
            want = theirs(x + x if residual else x)
        except IndexError:
            # torch's affine instance norms crash in select() on an empty batch (no check
            # behind it); normkit returns the empty output and counts nothing, as torch's
            # instance norms never do.
            want, theirs = torch.empty_like(x), None
        except Exception as e:
            with pytest.raises(type(e)):
                ours(x, x) if residual else ours(x)
            continue
        got = ours(x, x) if residual else ours(x)
        if residual:
            got, total = got
            assert total.shape == x.shape and total.dtype == x.dtype
        assert got.shape == want.shape and got.dtype == want.dtype, shape
        for name, value in before.items():
            assert torch.equal(getattr(ours, name), value), f"{name} moved on {shape}"
            t = value if theirs is None else getattr(theirs, name)
            assert torch.equal(t, value) or torch.isnan(t).all(), f"torch's {name} on {shape}"
        o = getattr(ours, "num_batches_tracked", None)
        t = counted if theirs is None else getattr(theirs, "num_batches_tracked", None)
        assert (t is None) == (o is None), shape
        assert t is None or torch.equal(o, t), f"num_batches_tracked {o} vs torch's {t} on {shape}"


def test_get_norm_builds_lazy_layers_with_their_defaults():
    """A lazy layer takes its features from the first input: get_norm's num_features is not
    passed on positionally (where torch's lazy constructors have ``eps``)."""
    for name, twin in (("lazybn2d", nn.LazyBatchNorm2d), ("lazyin1d", nn.LazyInstanceNorm1d)):
        m = nkn.get_norm(name, 64, momentum=0.3)
        assert (m.eps, m.momentum) == (twin().eps, 0.3)


def _empty(*shape: int) -> torch.Tensor:
    return torch.randn(0, *shape)


#: Valid arguments with N = 0 for every normkit row without a torch twin.
EMPTY_CALLS: dict[type[nn.Module], list[tuple[torch.Tensor, ...]]] = {
    nkn.BatchNormalization: [(_empty(C),), (_empty(3, C),)],
    nkn.FrozenBatchNorm: [(_empty(C, 5, 5),), (_empty(C),)],
    nkn.FrozenBatchNorm1d: [(_empty(C),), (_empty(C, 7),)],
    nkn.FrozenBatchNorm2d: [(_empty(C, 5, 5),)],
    nkn.FrozenBatchNorm3d: [(_empty(C, 3, 3, 3),)],
    nkn.FrozenBatchNormAct2d: [(_empty(C, 5, 5),)],
    nkn.ChannelNorm: [(_empty(C, 7),), (_empty(C, 5, 5),)],
    nkn.LayerNorm2d: [(_empty(C, 5, 5),), (_empty(C),)],
    nkn.SplitBatchNorm2d: [(_empty(C, 5, 5),)],
    nkn.EvoNorm2dB0: [(_empty(C, 5, 5),)],
    nkn.EvoNorm2dS0: [(_empty(C, 5, 5),)],
    nkn.FilterResponseNorm2d: [(_empty(C, 5, 5),)],
    nkn.GlobalResponseNorm: [(_empty(5, 5, C),)],
    nkn.DyT: [(_empty(3, C),), (_empty(C),)],
    nkn.AdaLayerNorm: [(_empty(3, C), _empty(C))],
    nkn.AdaLNZero: [(_empty(3, C), _empty(C))],
    nkn.AdaGroupNorm: [(_empty(C, 5, 5), _empty(C))],
    nkn.ConditionalBatchNorm2d: [(_empty(C, 5, 5), torch.zeros(0, dtype=torch.long))],
    nkn.AdaIN: [(_empty(C, 5, 5), _empty(C, 6, 6)), (_empty(C, 5, 5), (_empty(C), _empty(C)))],
    nkn.FiLM: [(_empty(C, 5, 5), _empty(C))],
    nkn.QKNorm: [(_empty(2, 3, C), _empty(2, 3, C))],
    nkn.UnitNormalization: [(_empty(C, 5, 5),), (_empty(C),)],
}
NO_TWIN_ROWS = [
    r for r in CLASS_ROWS if r.constructor_twin is None and r.cls.__module__.startswith("normkit")
]


def test_every_row_without_a_twin_has_empty_inputs():
    assert {r.cls for r in NO_TWIN_ROWS} == set(EMPTY_CALLS)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("row", NO_TWIN_ROWS, ids=_name)
def test_empty_batch_without_a_twin(row, train):
    """A norm torch.nn lacks gives an empty output on N = 0 and leaves its running statistics
    (as torch's batch norms do), or says why not in a ValueError; never a bare IndexError."""
    for args in EMPTY_CALLS[row.cls]:
        m = _randomized(_instance(row)).train(train)
        before = {n: b.clone() for n, b in m.named_buffers() if not is_lazy(b)}
        try:
            out = m(*args)
        except ValueError as e:
            assert "got" in str(e), str(e)  # says what it got, beside what it expects
            continue
        x = args[0]
        for y in out if isinstance(out, tuple) else (out,):
            assert y.shape[0] == 0 and y.dtype == x.dtype
        y = out[0] if isinstance(out, tuple) else out
        assert y.shape == x.shape
        for name, value in before.items():
            if "running" in name:
                assert torch.equal(m.get_buffer(name), value), f"{name} moved"
