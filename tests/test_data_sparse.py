"""Sparse input (scipy CSR/CSC/COO, torch sparse COO/CSR) against scikit-learn on the same
matrices: fitted attributes, transforms (format and values), inverse transforms, exact
streaming merges, the errors for configurations that cannot keep sparsity, ``copy=False``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import preprocessing as skp

import normkit.data as nd

SPARSE = [
    "StandardScaler(with_mean=False)",
    "StandardScaler(with_mean=False, with_std=False)",
    "MaxAbsScaler()",
    "MaxAbsScaler(clip=True)",
    "RobustScaler(with_centering=False)",
    "RobustScaler(with_centering=False, quantile_range=(10.0, 95.0), unit_variance=True)",
    "Normalizer()",
    "Normalizer('l1')",
    "Normalizer('max')",
]
ATTRS = ("mean_", "var_", "scale_", "max_abs_", "n_samples_seen_", "center_")
FORMATS = {
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
    "coo": sp.coo_matrix,
    "csr_array": sp.csr_array,
}


def make(spec: str, lib) -> object:
    return eval(
        spec,
        {
            "StandardScaler": lib.StandardScaler,
            "MaxAbsScaler": lib.MaxAbsScaler,
            "RobustScaler": lib.RobustScaler,
            "Normalizer": lib.Normalizer,
        },
    )


def sparse_data(n=200, f=6, density=0.3, seed=0, dtype=np.float64, nan=False):
    rng = np.random.default_rng(seed)
    X = sp.random(n, f, density=density, format="csr", random_state=seed, dtype=np.float64)
    X.data = (X.data - 0.4) * rng.uniform(1, 20, X.nnz)
    if nan:
        X.data[rng.random(X.nnz) < 0.1] = np.nan
    Xd = X.toarray()
    Xd[:, 0] = 2.5  # a constant column with no implicit zero
    X = sp.csr_matrix(Xd)
    X[:, 1] = 0.0  # an all-zero column
    X.eliminate_zeros()
    return X.astype(dtype)


pytestmark = [
    pytest.mark.filterwarnings("ignore:Changing the sparsity structure"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
]


def dense(y) -> np.ndarray:
    return y.to_dense().numpy() if isinstance(y, torch.Tensor) else y.toarray()


@pytest.mark.parametrize("spec", SPARSE)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_scipy_sparse_matches_sklearn(spec, fmt, dtype):
    nan = "Normalizer" not in spec
    X = FORMATS[fmt](sparse_data(dtype=dtype, nan=nan))
    ours, theirs = make(spec, nd).fit(X), make(spec, skp).fit(X)
    # scikit-learn's sparse moments run in float32 for float32 data, normkit's in float64: the
    # statistics are checked against float64 data, the dtypes against scikit-learn's
    exact = make(spec, skp).fit(X.astype(np.float64)) if "Standard" in spec else theirs
    for name in ATTRS:
        if hasattr(theirs, name):
            a, b = getattr(ours, name), getattr(theirs, name)
            if b is None:
                assert a is None
                continue
            want = getattr(exact, name)
            np.testing.assert_allclose(np.asarray(a), want, rtol=1e-10, atol=1e-12, equal_nan=True)
            if isinstance(b, np.ndarray) and name != "n_samples_seen_":
                # (scikit-learn's sparse n_samples_seen_ is float32 for float32 data; a count
                # stays float64 here, exact beyond 2**24)
                assert np.asarray(a).dtype == b.dtype, name
    Xt = FORMATS[fmt](sparse_data(n=30, seed=1, dtype=dtype, nan=nan))
    yo, ys = ours.transform(Xt), theirs.transform(Xt)
    assert type(yo) is type(ys) and yo.format == ys.format and yo.dtype == ys.dtype
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dense(yo), dense(ys), rtol=tol, atol=tol, equal_nan=True)
    if hasattr(theirs, "inverse_transform"):
        bo, bs = ours.inverse_transform(ys), theirs.inverse_transform(ys)
        assert type(bo) is type(bs) and bo.format == bs.format
        np.testing.assert_allclose(dense(bo), dense(bs), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("spec", SPARSE)
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_torch_sparse_tensors_stay_sparse(spec, layout):
    X = sparse_data(n=60, seed=2)
    t = torch.from_numpy(X.toarray())
    t = t.to_sparse() if layout == "coo" else t.to_sparse_csr()
    ours, theirs = make(spec, nd).fit(t), make(spec, skp).fit(X)
    y = ours.transform(t)
    assert isinstance(y, torch.Tensor) and y.layout == t.layout and y.dtype == t.dtype
    np.testing.assert_allclose(dense(y), theirs.transform(X).toarray(), rtol=1e-12, atol=1e-12)
    if hasattr(theirs, "inverse_transform"):
        back = ours.inverse_transform(y)
        assert back.layout == t.layout
        np.testing.assert_allclose(dense(back), X.toarray(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("axis", [0, 1])
def test_normalize_sparse_matches_sklearn(norm, axis):
    X = sparse_data(n=40, seed=3)
    yo, ys = nd.normalize(X, norm, axis=axis), skp.normalize(X, norm, axis=axis)
    assert yo.format == ys.format
    np.testing.assert_allclose(yo.toarray(), ys.toarray(), rtol=1e-12, atol=1e-15)
    yt = nd.normalize(torch.from_numpy(X.toarray()).to_sparse(), norm, axis=axis)
    np.testing.assert_allclose(dense(yt), ys.toarray(), rtol=1e-12, atol=1e-15)
    if norm == "max":  # scikit-learn returns sparse norms only for "max"
        _, no = nd.normalize(X, norm, axis=axis, return_norm=True)
        _, ns = skp.normalize(X, norm, axis=axis, return_norm=True)
        np.testing.assert_allclose(no, ns, rtol=1e-12)


@given(
    cuts=st.lists(st.integers(1, 149), max_size=5, unique=True),
    seed=st.integers(0, 2**16),
    weighted=st.booleans(),
    mixed=st.booleans(),
)
@settings(max_examples=25, deadline=None)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scikit-learn: sqrt of a -1e-46 variance
def test_sparse_partial_fit_any_chunking_equals_fit(cuts, seed, weighted, mixed):
    X = sparse_data(n=150, f=5, seed=seed % 50, nan=True)
    w = np.random.default_rng(seed).uniform(0.1, 2, 150) if weighted else None
    sc, ma = nd.StandardScaler(with_mean=False), nd.MaxAbsScaler()
    bounds = [0, *sorted(cuts), 150]
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        chunk = X[a:b]
        if mixed and k % 2:  # dense and sparse chunks mix
            chunk = chunk.toarray()
        sc.partial_fit(chunk, sample_weight=None if w is None else w[a:b])
        ma.partial_fit(chunk)
    want = skp.StandardScaler(with_mean=False).fit(X, sample_weight=w)
    for name in ("mean_", "var_", "scale_", "n_samples_seen_"):
        # scikit-learn's weighted sparse variance of the constant column is ±1e-46, not 0
        np.testing.assert_allclose(getattr(sc, name), getattr(want, name), rtol=1e-10, atol=1e-30)
    np.testing.assert_array_equal(ma.max_abs_, skp.MaxAbsScaler().fit(X).max_abs_)
    # the constant and the all-zero column: exactly zero variance
    assert sc.var_[0] == 0.0 and sc.var_[1] == 0.0 and sc.mean_[0] == 2.5


def test_configurations_that_cannot_stay_sparse_raise_sklearns_errors():
    X = sparse_data(n=20)
    t = torch.from_numpy(X.toarray()).to_sparse()
    cases = [
        ("StandardScaler()", "fit"),
        ("StandardScaler()", "partial_fit"),
        ("RobustScaler()", "fit"),
        ("MinMaxScaler()", "fit"),
        ("MinMaxScaler()", "partial_fit"),
    ]
    for spec, method in cases:
        lib = {k: getattr(skp, k) for k in ("StandardScaler", "RobustScaler", "MinMaxScaler")}
        with pytest.raises((ValueError, TypeError)) as theirs:
            getattr(eval(spec, lib), method)(X)
        ours_lib = {k: getattr(nd, k) for k in lib}
        for data in (X, t):
            with pytest.raises(type(theirs.value), match=str(theirs.value)[:40].replace("(", ".")):
                getattr(eval(spec, ours_lib), method)(data)
    dense_fit = nd.StandardScaler().fit(X.toarray())
    with pytest.raises(ValueError, match="Cannot center sparse matrices"):
        dense_fit.transform(X)
    with pytest.raises(ValueError, match="Cannot center sparse matrices"):
        nd.RobustScaler().fit(X.toarray()).transform(X)


def test_copy_false_scales_scipy_data_in_place():
    X = sparse_data(n=50, seed=4)
    want = skp.MaxAbsScaler().fit(X).transform(X)
    sc = nd.MaxAbsScaler(copy=False).fit(X)
    Y = X.copy()
    out = sc.transform(Y)
    assert out is Y
    np.testing.assert_allclose(Y.toarray(), want.toarray(), rtol=1e-15)
    Z = X.copy()
    assert nd.StandardScaler(with_mean=False).fit(X).transform(Z, copy=False) is Z
    keep = X.copy()
    nd.StandardScaler(with_mean=False).fit(X).transform(X)
    np.testing.assert_array_equal(X.toarray(), keep.toarray())  # copy=True: input untouched


def test_sparse_features_are_checked():
    X = sparse_data(n=20)
    sc = nd.MaxAbsScaler().fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but MaxAbsScaler is expecting 6"):
        sc.transform(X[:, :4])
    with pytest.raises(ValueError, match="features"):
        sc.transform(torch.from_numpy(X[:, :4].toarray()).to_sparse())
    bad = X.copy()
    bad.data[0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        nd.MaxAbsScaler().fit(bad)
