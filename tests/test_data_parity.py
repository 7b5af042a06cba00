"""scikit-learn parity of normkit.data beyond the fitted numbers: sample weights (and their
exact streaming merge), metadata routing, parameter validation, ``copy=``, float16 attributes,
exact zero variance of constant features. Oracle: scikit-learn's own estimators."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sklearn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import preprocessing as skp
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

import normkit.data as nd

STD_ATTRS = ("mean_", "var_", "scale_", "n_samples_seen_")


def same_message(a: BaseException, b: BaseException) -> None:
    """Equal messages, up to the order in which a set of options is printed."""

    def canon(e: BaseException) -> str:
        return re.sub(r"\{[^}]*\}", lambda m: str(sorted(m.group(0)[1:-1].split(", "))), str(e))

    assert canon(a) == canon(b)


def host(v: object) -> np.ndarray:
    return np.asarray(v.cpu().numpy() if isinstance(v, torch.Tensor) else v)


def check_attrs(ours, want, names, rtol=1e-12, atol=1e-12):
    for name in names:
        a, b = getattr(ours, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_allclose(host(a), np.asarray(b), rtol=rtol, atol=atol, equal_nan=True)


def weighted_data(n: int, f: int, seed: int, nan_frac: float = 0.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)) * rng.uniform(0.5, 5, f) + rng.uniform(-50, 50, f)
    X[rng.random((n, f)) < nan_frac] = np.nan
    w = rng.uniform(0, 3, n)
    w[rng.random(n) < 0.2] = 0.0  # zero weights drop a sample
    w[0] = 1.0
    return X, w


# ----------------------------------------------------------------------------- sample_weight


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nan_frac", [0.0, 0.2])
@pytest.mark.parametrize(
    "params", [{}, {"with_mean": False}, {"with_std": False}], ids=["both", "no-mean", "no-std"]
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_sample_weight_matches_sklearn(dtype, nan_frac, params):
    X, w = weighted_data(200, 5, 0, nan_frac)
    X = X.astype(dtype)
    ours = nd.StandardScaler(**params).fit(X, sample_weight=w)
    theirs = skp.StandardScaler(**params).fit(X, sample_weight=w)
    check_attrs(ours, theirs, STD_ATTRS, rtol=1e-10, atol=1e-10)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=rtol, atol=rtol)
    # a tensor and its weights as a tensor: the same statistics
    t = nd.StandardScaler(**params).fit(torch.from_numpy(X), sample_weight=torch.from_numpy(w))
    check_attrs(t, theirs, STD_ATTRS, rtol=1e-6 if dtype == np.float32 else 1e-10, atol=1e-8)


def test_sample_weight_none_scalar_and_integer_weights():
    X, _ = weighted_data(50, 3, 1)
    plain = skp.StandardScaler().fit(X)
    check_attrs(nd.StandardScaler().fit(X, sample_weight=None), plain, STD_ATTRS)
    check_attrs(nd.StandardScaler().partial_fit(X, sample_weight=None), plain, STD_ATTRS)
    # integer weights = repeated samples (an independent oracle)
    k = np.random.default_rng(2).integers(1, 4, 50)
    rep = skp.StandardScaler().fit(np.repeat(X, k, axis=0))
    check_attrs(nd.StandardScaler().fit(X, sample_weight=k), rep, ("mean_", "var_", "scale_"))
    assert nd.StandardScaler().fit(X, sample_weight=k).n_samples_seen_ == k.sum()
    check_attrs(
        nd.StandardScaler().fit(X, sample_weight=2.5),
        skp.StandardScaler().fit(X, sample_weight=2.5),
        STD_ATTRS,
    )


@given(
    cuts=st.lists(st.integers(1, 119), max_size=6, unique=True),
    seed=st.integers(0, 2**16),
    nan_frac=st.sampled_from([0.0, 0.15]),
    tensors=st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_weighted_partial_fit_any_chunking_equals_one_weighted_fit(cuts, seed, nan_frac, tensors):
    X, w = weighted_data(120, 4, seed, nan_frac)
    sc = nd.StandardScaler()
    for xc, wc in zip(np.split(X, sorted(cuts)), np.split(w, sorted(cuts)), strict=True):
        if not wc.any():
            continue  # scikit-learn refuses all-zero weights in one call; nothing to add
        if tensors:
            xc, wc = torch.from_numpy(xc), torch.from_numpy(wc)
        sc.partial_fit(xc, sample_weight=wc)
    check_attrs(sc, nd.StandardScaler().fit(X, sample_weight=w), STD_ATTRS, rtol=1e-11)
    with np.errstate(all="ignore"):
        check_attrs(sc, skp.StandardScaler().fit(X, sample_weight=w), STD_ATTRS, rtol=1e-9)


def test_sample_weight_errors_are_sklearns():
    X, w = weighted_data(10, 2, 0)
    for bad in (w[:5], np.ones((10, 1)), np.zeros(10)):
        with pytest.raises(ValueError) as theirs:
            skp.StandardScaler().fit(X, sample_weight=bad)
        with pytest.raises(ValueError, match=re.escape(str(theirs.value)[:30])):
            nd.StandardScaler().fit(X, sample_weight=bad)


def test_scalers_without_weights_refuse_them_naming_the_public_class():
    X = np.ones((4, 2))
    for cls in (nd.MinMaxScaler, nd.MaxAbsScaler, nd.RobustScaler, nd.Normalizer):
        with pytest.raises(TypeError, match=rf"{cls.__name__}\.fit\(\) got an unexpected"):
            cls().fit(X, sample_weight=np.ones(4))


def test_metadata_routing_in_a_pipeline_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 3)) * 4 + 2
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.standard_normal(80)
    w = rng.uniform(0.1, 2, 80)
    with sklearn.config_context(enable_metadata_routing=True):

        def pipe(scaler):
            return make_pipeline(
                scaler.set_fit_request(sample_weight=True),
                LinearRegression().set_fit_request(sample_weight=True),
            ).fit(X, y, sample_weight=w)

        ours, theirs = pipe(nd.StandardScaler()), pipe(skp.StandardScaler())
        check_attrs(ours[0], theirs[0], STD_ATTRS)
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10)
        assert nd.StandardScaler().set_partial_fit_request(sample_weight=True) is not None


# ----------------------------------------------------------------------------- parameters

BAD_PARAMS = [
    ("StandardScaler", {"with_mean": "no"}),
    ("StandardScaler", {"with_std": 1}),
    ("StandardScaler", {"copy": None}),
    ("MinMaxScaler", {"feature_range": [0, 1]}),
    ("MinMaxScaler", {"clip": "yes"}),
    ("MaxAbsScaler", {"clip": 0}),
    ("RobustScaler", {"unit_variance": "yes"}),
    ("RobustScaler", {"quantile_range": [25, 75]}),
    ("RobustScaler", {"with_centering": None}),
    ("Normalizer", {"norm": "l3"}),
    ("Normalizer", {"copy": "no"}),
]


@pytest.mark.parametrize("name, params", BAD_PARAMS)
def test_invalid_parameters_raise_sklearns_error(name, params):
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(InvalidParameterError) as theirs:
        getattr(skp, name)(**params).fit(X)
    with pytest.raises(InvalidParameterError) as ours:
        getattr(nd, name)(**params).fit(X)
    same_message(ours.value, theirs.value)
    if hasattr(skp, name) and hasattr(getattr(nd, name), "partial_fit"):
        with pytest.raises(InvalidParameterError):
            getattr(nd, name)(**params).partial_fit(X)


def test_normalize_function_parameters_as_sklearn():
    X = np.random.default_rng(0).random((4, 3))
    for kwargs in ({"norm": "l3"}, {"axis": 2}, {"copy": "no"}):
        with pytest.raises(InvalidParameterError) as theirs:
            skp.normalize(X, **kwargs)
        with pytest.raises(InvalidParameterError) as ours:
            nd.normalize(X, **kwargs)
        same_message(ours.value, theirs.value)


# ----------------------------------------------------------------------------- copy=


COPY_CASES = [
    (lambda c: nd.StandardScaler(copy=c), lambda c: skp.StandardScaler(copy=c)),
    (lambda c: nd.MinMaxScaler(copy=c, clip=True), lambda c: skp.MinMaxScaler(copy=c, clip=True)),
    (lambda c: nd.MaxAbsScaler(copy=c), lambda c: skp.MaxAbsScaler(copy=c)),
    (lambda c: nd.RobustScaler(copy=c), lambda c: skp.RobustScaler(copy=c)),
    (lambda c: nd.Normalizer(copy=c), lambda c: skp.Normalizer(copy=c)),
]


@pytest.mark.parametrize("i", range(len(COPY_CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_false_scales_in_place_as_sklearn(i, dtype):
    ours_make, theirs_make = COPY_CASES[i]
    rng = np.random.default_rng(i)
    X = (rng.standard_normal((40, 4)) * 3 + 1).astype(dtype)
    Xt = (rng.standard_normal((10, 4)) * 3 + 1).astype(dtype)
    want = theirs_make(True).fit(X).transform(Xt)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    # copy=True leaves the input alone
    keep = Xt.copy()
    np.testing.assert_allclose(ours_make(True).fit(X).transform(Xt), want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(Xt, keep)
    # copy=False writes into the numpy array and into the tensor
    sc = ours_make(False).fit(X)
    a = Xt.copy()
    out = sc.transform(a)
    assert np.shares_memory(out, a)
    np.testing.assert_allclose(a, want, rtol=tol, atol=tol)
    t = torch.from_numpy(Xt.copy())
    assert sc.transform(t) is t
    np.testing.assert_allclose(t.numpy(), want, rtol=tol, atol=tol)
    if hasattr(sc, "inverse_transform"):
        back_want = theirs_make(True).fit(X).inverse_transform(want)
        assert sc.inverse_transform(t) is t
        np.testing.assert_allclose(t.numpy(), back_want, rtol=tol * 10, atol=tol * 10)


def test_copy_false_leaves_autograd_and_read_only_inputs_alone():
    sc = nd.StandardScaler(copy=False).fit(np.random.default_rng(0).random((20, 3)))
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    y = sc.transform(x)
    assert y is not x
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(1 / sc.scale_, (5, 3)))
    a = np.random.default_rng(1).random((5, 3))
    a.flags.writeable = False
    np.testing.assert_allclose(
        sc.transform(a),
        skp.StandardScaler().fit(np.random.default_rng(0).random((20, 3))).transform(a),
    )
    # transform's own copy argument wins over the estimator's
    b = np.random.default_rng(2).random((5, 3))
    keep = b.copy()
    nd.StandardScaler(copy=False).fit(keep).transform(b, copy=True)
    np.testing.assert_array_equal(b, keep)


# ----------------------------------------------------------------------------- float16


@pytest.mark.parametrize("name", ["StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"])
def test_float16_attributes_have_sklearns_dtypes(name):
    X = (np.random.default_rng(0).random((60, 3)) * 8 - 2).astype(np.float16)
    ours, theirs = getattr(nd, name)().fit(X), getattr(skp, name)().fit(X)
    for k, v in vars(theirs).items():
        if k.endswith("_") and isinstance(v, np.ndarray):
            a = getattr(ours, k)
            assert a.dtype == v.dtype, k
            np.testing.assert_allclose(a.astype(np.float64), v, rtol=1e-3, atol=1e-3)
    assert ours.transform(X).dtype == theirs.transform(X).dtype == np.float16


# ----------------------------------------------------------------------------- var_ == 0


@given(
    value=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    n=st.integers(1, 3000),
    cuts=st.lists(st.integers(1, 2999), max_size=4, unique=True),
    dtype=st.sampled_from([np.float32, np.float64]),
    weighted=st.booleans(),
    nan=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_constant_features_have_exactly_zero_variance(value, n, cuts, dtype, weighted, nan):
    rng = np.random.default_rng(n)
    X = np.empty((n, 2), dtype=dtype)
    X[:, 0] = value
    X[:, 1] = rng.standard_normal(n) * 0.01 + 1e3  # |mean| >> std: keeps two-pass accuracy
    if nan and n > 2:
        X[rng.random(n) < 0.2, 0] = np.nan
        X[0, 0] = value
    w = rng.uniform(0.5, 2, n) if weighted else None
    full = nd.StandardScaler().fit(X, sample_weight=w)
    assert full.var_[0] == 0.0 and full.scale_[0] == 1.0
    assert full.mean_[0] == np.float64(dtype(value))
    sc = nd.StandardScaler()
    cuts = sorted(c for c in cuts if c < n)
    for idx in np.split(np.arange(n), cuts):
        sc.partial_fit(X[idx], sample_weight=None if w is None else w[idx])
    assert sc.var_[0] == 0.0 and sc.mean_[0] == full.mean_[0]
    # the other column: two-pass accuracy against float64 numpy
    x1 = X[:, 1].astype(np.float64)
    ww = np.ones(n) if w is None else w.astype(dtype).astype(np.float64)  # sklearn's rounding
    mu = np.average(x1, weights=ww)
    var = np.average((x1 - mu) ** 2, weights=ww)
    np.testing.assert_allclose(full.var_[1], var, rtol=1e-9, atol=1e-18)
    if w is None:
        assert skp.StandardScaler().fit(X[:, :1].astype(np.float64)).var_[0] == 0.0 or nan


def test_constant_tensor_column_has_zero_variance():
    x = torch.full((1000, 3), 0.1, dtype=torch.float64)
    x[:, 1] = torch.linspace(0, 1, 1000, dtype=torch.float64)
    sc = nd.StandardScaler().fit(x)
    assert sc.var_[0].item() == 0.0 and sc.var_[2].item() == 0.0 and sc.var_[1].item() > 0


# ----------------------------------------------------------------------------- threads


NO_COMPUTE = ("aten.lift_fresh", "aten.detach", "aten.alias", "aten.view")


def test_large_cpu_chunks_never_reach_torchs_thread_pool():
    """On CPU, the scalers' passes over a chunk run single-threaded (the serial Numba kernels or
    numpy's ufuncs): no torch op touches a chunk-sized tensor, so torch's thread pool (which
    loses on a small shared machine) is never woken for them."""
    pytest.importorskip("numba")
    from torch.utils._python_dispatch import TorchDispatchMode

    big: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            for a in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(a, torch.Tensor) and a.numel() >= 1 << 15:
                    big.append(str(func))
            return func(*args, **(kwargs or {}))

    X = np.random.default_rng(0).standard_normal((50_000, 8)).astype(np.float32) + 3
    scalers = [nd.StandardScaler(), nd.MinMaxScaler(clip=True), nd.MaxAbsScaler()]
    for sc in scalers:
        sc.partial_fit(X)  # first call: kernels compiled or loaded outside the watch
    with Watch():
        for sc in scalers:
            sc.partial_fit(X)
            sc.transform(X)
            sc.inverse_transform(X)
            sc.transform(torch.from_numpy(X))
    # (lift_fresh/detach/alias: wrapping a numpy array as a tensor, no pass over memory)
    assert sorted({op for op in big if not op.startswith(NO_COMPUTE)}) == []


# ----------------------------------------------------------------------------- callbacks


class Recorder:
    """A scikit-learn fit callback that records its hooks."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def setup(self, estimator, context):
        self.calls.append(("setup", None))

    def on_fit_task_begin(self, estimator, context, *, X=None, y=None, metadata=None, **_):
        self.calls.append(("begin", None if metadata is None else metadata.get("sample_weight")))

    def on_fit_task_end(self, estimator, context, *, X=None, y=None, metadata=None, **_):
        self.calls.append(("end", None))

    def teardown(self, estimator, context):
        self.calls.append(("teardown", None))


def test_fit_callbacks_are_called_as_sklearns():
    pytest.importorskip("sklearn.callback")
    X, w = weighted_data(50, 3, 0)
    for method in ("fit", "partial_fit"):
        ours, theirs = Recorder(), Recorder()
        getattr(nd.StandardScaler().set_callbacks(ours), method)(X, sample_weight=w)
        getattr(skp.StandardScaler().set_callbacks(theirs), method)(X, sample_weight=w)
        assert [c[0] for c in ours.calls] == [c[0] for c in theirs.calls]
        assert ours.calls[1][1] is w and theirs.calls[1][1] is w
