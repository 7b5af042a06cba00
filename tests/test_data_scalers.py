"""normkit.data scalers against scikit-learn (the oracle): fitted attributes, transforms,
inverse transforms, NaN and constant-column handling, dtypes, the estimator checks, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import preprocessing as skp
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import normkit.data as nd

# (normkit scaler, scikit-learn twin) with the same parameters
PAIRS = [
    (lambda: nd.StandardScaler(), lambda: skp.StandardScaler()),
    (lambda: nd.StandardScaler(with_mean=False), lambda: skp.StandardScaler(with_mean=False)),
    (lambda: nd.StandardScaler(with_std=False), lambda: skp.StandardScaler(with_std=False)),
    (
        lambda: nd.StandardScaler(with_mean=False, with_std=False),
        lambda: skp.StandardScaler(with_mean=False, with_std=False),
    ),
    (lambda: nd.MinMaxScaler(), lambda: skp.MinMaxScaler()),
    (
        lambda: nd.MinMaxScaler(feature_range=(-2, 3), clip=True),
        lambda: skp.MinMaxScaler(feature_range=(-2, 3), clip=True),
    ),
    (lambda: nd.MaxAbsScaler(), lambda: skp.MaxAbsScaler()),
    (lambda: nd.MaxAbsScaler(clip=True), lambda: skp.MaxAbsScaler(clip=True)),
    (lambda: nd.RobustScaler(), lambda: skp.RobustScaler()),
    (
        lambda: nd.RobustScaler(quantile_range=(10.0, 80.0), unit_variance=True),
        lambda: skp.RobustScaler(quantile_range=(10.0, 80.0), unit_variance=True),
    ),
    (lambda: nd.RobustScaler(with_centering=False), lambda: skp.RobustScaler(with_centering=False)),
    (lambda: nd.RobustScaler(with_scaling=False), lambda: skp.RobustScaler(with_scaling=False)),
]
PAIR_IDS = [repr(p[0]()) for p in PAIRS]
ATTRS = (
    "mean_",
    "var_",
    "scale_",
    "n_samples_seen_",
    "data_min_",
    "data_max_",
    "data_range_",
    "min_",
    "max_abs_",
    "center_",
    "n_features_in_",
)


def make_data(kind: str, dtype: np.dtype, n: int = 301, f: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)) * rng.uniform(0.1, 10, f) + rng.uniform(-5, 5, f)
    if kind == "offset":  # |mean| >> std: naive E[x²]−E[x]² would cancel
        X += 1e4
    if kind in ("nan", "constant"):
        X[rng.random((n, f)) < 0.15] = np.nan
        X[:, 1] = np.nan if kind == "nan" else X[:, 1]
        X[0, 1] = 3.0  # column 1: a single valid value
    if kind == "constant":
        X[:, 2] = 7.25
        X[:, 3] = 0.0
    return X.astype(dtype)


def assert_same(ours: object, theirs: object, rtol: float, atol: float) -> None:
    if theirs is None:
        assert ours is None
        return
    a = np.asarray(ours.numpy() if isinstance(ours, torch.Tensor) else ours)
    b = np.asarray(theirs)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


TOL = {np.float32: (2e-6, 1e-6), np.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("kind", ["normal", "offset", "nan", "constant"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # sklearn: all-NaN slices, 0/0
def test_matches_sklearn(pair, kind, dtype):
    X = make_data(kind, dtype)
    ours, theirs = pair[0]().fit(X), pair[1]().fit(X)
    for name in ATTRS:
        if hasattr(theirs, name):
            a, b = getattr(ours, name), getattr(theirs, name)
            assert_same(a, b, rtol=1e-9, atol=1e-9 * (1e4 if kind == "offset" else 1))
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype, name
    Xt = make_data(kind, dtype, n=50, seed=1)
    yo, ys = ours.transform(Xt), theirs.transform(Xt)
    assert isinstance(yo, np.ndarray) and yo.dtype == ys.dtype == dtype
    rtol, atol = TOL[dtype]
    if kind == "offset" and dtype == np.float64:  # the 1e4 offset's last bits differ (sum order)
        rtol, atol = rtol * 1e4, atol * 1e4
    assert_same(yo, ys, rtol, atol)
    assert_same(ours.inverse_transform(ys), theirs.inverse_transform(ys), rtol, atol * 1e4)
    # the tensor path gives the same numbers, as a tensor of the same dtype
    yt = ours.transform(torch.from_numpy(Xt))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.from_numpy(Xt).dtype
    assert_same(yt, ys, rtol, atol)


@given(
    n=st.integers(1, 40),
    f=st.integers(1, 5),
    nan_frac=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
    which=st.integers(0, len(PAIRS) - 1),
)
@settings(max_examples=40, deadline=None)
def test_matches_sklearn_any_shape(n, f, nan_frac, seed, which):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)) * 3 + rng.integers(-3, 3)
    X[rng.random((n, f)) < nan_frac] = np.nan
    ours, theirs = PAIRS[which][0](), PAIRS[which][1]()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: all-NaN slices
        ys = theirs.fit(X).transform(X)
    yo = ours.fit(X).transform(X)
    assert_same(yo, ys, 1e-10, 1e-10)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_matches_sklearn(norm, axis, dtype):
    X = make_data("normal", dtype, n=40, f=5)
    X[3] = 0.0  # a zero row stays zero
    X[:, 2] = 0.0
    ys, ns = skp.normalize(X, norm, axis=axis, return_norm=True)
    yo, no = nd.normalize(X, norm, axis=axis, return_norm=True)
    rtol, atol = TOL[dtype]
    assert yo.dtype == dtype
    assert_same(yo, ys, rtol, atol)
    assert_same(no, ns, rtol, atol)
    yt = nd.normalize(torch.from_numpy(X), norm, axis=axis)
    assert_same(yt, ys, rtol, atol)
    est = nd.Normalizer(norm).fit(X)
    assert_same(est.transform(X), skp.Normalizer(norm).fit_transform(X), rtol, atol)


def test_normalize_tensor_any_axis_against_numpy():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    want = x.numpy() / np.linalg.norm(x.numpy(), axis=-1, keepdims=True)
    assert_same(nd.normalize(x, axis=-1), want, 1e-12, 1e-12)
    want = x.numpy() / np.abs(x.numpy()).max(axis=1, keepdims=True)
    assert_same(nd.normalize(x, "max", axis=1), want, 1e-12, 1e-12)


@parametrize_with_checks(
    [
        nd.StandardScaler(),
        nd.StandardScaler(with_mean=False),
        nd.MinMaxScaler(),
        nd.MaxAbsScaler(),
        nd.RobustScaler(),
        nd.Normalizer(),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_works_in_sklearn_pipeline():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    ours = make_pipeline(nd.StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    theirs = make_pipeline(skp.StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-10)


# ----------------------------------------------------------------------------- errors


def test_errors_say_expected_and_got():
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError, match="X has 2 features, but StandardScaler is expecting 3"):
        nd.StandardScaler().fit(X).transform(X[:, :2])
    with pytest.raises(ValueError, match=r"2 features.*expecting 3"):
        nd.StandardScaler().fit(X).transform(torch.from_numpy(X[:, :2]))
    with pytest.raises(ValueError, match="expecting 3 features"):
        nd.StandardScaler().fit(X).inverse_transform(X[:, :2])
    with pytest.raises(ValueError, match=r"Expected a 2D tensor.*reshape\(-1, 1\)"):
        nd.StandardScaler().fit(torch.zeros(5))
    with pytest.raises(ValueError, match="infinity"):
        nd.MinMaxScaler().fit(torch.tensor([[1.0], [float("inf")]]))
    with pytest.raises(ValueError, match="NaN"):
        nd.Normalizer().fit(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="0 sample"):
        nd.MaxAbsScaler().fit(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="feature range"):
        nd.MinMaxScaler(feature_range=(1, 0)).fit(X)
    with pytest.raises(ValueError, match="quantile range"):
        nd.RobustScaler(quantile_range=(80.0, 20.0)).fit(X)
    with pytest.raises(ValueError, match="The 'norm' parameter of normalize must be a str among"):
        nd.normalize(X, "l3")


def test_integer_tensor_becomes_default_float():
    x = torch.arange(12).reshape(6, 2)
    y = nd.StandardScaler().fit_transform(x)
    assert y.dtype == torch.get_default_dtype()
    want = skp.StandardScaler().fit_transform(x.numpy().astype(np.float64))
    assert_same(y.double(), want, 1e-6, 1e-6)
