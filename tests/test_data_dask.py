"""Dask input: fit / partial_fit on a dask array or dataframe equal fit on the same numpy data
(float64, exact merge), one pass over the blocks, lazy transforms, a dask.distributed cluster,
and the fix named where a step needs whole columns. Oracles: normkit's and scikit-learn's fit on
the computed array."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import preprocessing as skp

import normkit.data as nd

da = pytest.importorskip("dask.array")

ATTRS = {
    nd.StandardScaler: ("mean_", "var_", "scale_", "n_samples_seen_"),
    nd.MinMaxScaler: ("data_min_", "data_max_", "scale_", "min_", "n_samples_seen_"),
    nd.MaxAbsScaler: ("max_abs_", "scale_", "n_samples_seen_"),
}
SK = {
    nd.StandardScaler: skp.StandardScaler,
    nd.MinMaxScaler: skp.MinMaxScaler,
    nd.MaxAbsScaler: skp.MaxAbsScaler,
}


def data(n=3000, f=5, seed=0, nan=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)) * rng.uniform(0.5, 5, f) + 1e3
    if nan:
        X[rng.random(X.shape) < 0.05] = np.nan
    X[:, 0] = 0.25  # constant: var_ exactly 0 through the block merge
    return X


def same(a, b, names, rtol=1e-12):
    for name in names:
        np.testing.assert_allclose(
            np.asarray(getattr(a, name)),
            np.asarray(getattr(b, name)),
            rtol=rtol,
            atol=1e-12,
            equal_nan=True,
        )


@pytest.mark.parametrize("cls", list(ATTRS))
@given(rows=st.integers(50, 1500), cols=st.integers(1, 5), seed=st.integers(0, 100))
@settings(max_examples=8, deadline=None)
def test_fit_on_dask_equals_fit_on_numpy(cls, rows, cols, seed):
    X = data(seed=seed)
    D = da.from_array(X, chunks=(rows, cols))
    ours = cls().fit(D)
    same(ours, cls().fit(X), ATTRS[cls])
    with np.errstate(all="ignore"):
        same(ours, SK[cls]().fit(X), ATTRS[cls], rtol=1e-10)
    if cls is nd.StandardScaler:
        assert ours.var_[0] == 0.0
    # partial_fit: dask and numpy batches mix
    sc = cls().partial_fit(D[:1000]).partial_fit(X[1000:2000]).partial_fit(D[2000:])
    same(sc, ours, ATTRS[cls])


def test_weighted_fit_and_transforms_are_lazy():
    X = data()
    w = np.random.default_rng(1).uniform(0, 2, len(X))
    D = da.from_array(X, chunks=(700, 5))
    sc = nd.StandardScaler().fit(D, sample_weight=da.from_array(w, chunks=1000))
    with np.errstate(all="ignore"):
        same(sc, skp.StandardScaler().fit(X, sample_weight=w), ATTRS[nd.StandardScaler], 1e-10)
    for est in (
        sc,
        nd.MinMaxScaler().fit(D),
        nd.QuantileTransformer(n_quantiles=50).fit(X),
        nd.PowerTransformer().fit(X),
    ):
        y = est.transform(D)
        assert isinstance(y, da.Array) and y.dtype == np.float64
        np.testing.assert_allclose(y.compute(), est.transform(X), rtol=1e-12, equal_nan=True)
        back = est.inverse_transform(y)
        assert isinstance(back, da.Array)
        np.testing.assert_allclose(
            back.compute(), est.inverse_transform(est.transform(X)), rtol=1e-12, equal_nan=True
        )
    Z = np.abs(data(nan=False))
    assert isinstance(nd.Normalizer().fit(da.from_array(Z)).transform(da.from_array(Z)), da.Array)


def test_fit_reads_every_block_once():
    """One pass, no materialization: each block is produced once, by the workers, and the
    array is never gathered (blocks are generated on demand)."""
    calls = []
    lock = threading.Lock()

    def block(block_info=None):
        (start, _), _ = block_info[None]["array-location"]
        with lock:
            calls.append(start)
        return np.random.default_rng(start).standard_normal((500, 4)).astype(np.float32)

    D = da.map_blocks(block, chunks=((500,) * 12, (4,)), dtype=np.float32)
    sc = nd.StandardScaler().fit(D)
    assert sorted(calls) == [500 * i for i in range(12)]
    calls.clear()
    want = nd.StandardScaler().fit(D.compute())
    same(sc, want, ("mean_", "var_"), rtol=1e-12)


def test_dask_dataframe_keeps_feature_names():
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    X = data(nan=False)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    sc = nd.StandardScaler().fit(dd.from_pandas(frame, npartitions=3))
    assert list(sc.feature_names_in_) == list(frame.columns)
    same(sc, skp.StandardScaler().fit(frame), ("mean_", "var_"), rtol=1e-12)


def test_dask_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    X = data()
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        D = da.from_array(X, chunks=(400, 5))
        sc = nd.StandardScaler().fit(D)
        y = sc.transform(D).compute()
    same(sc, nd.StandardScaler().fit(X), ATTRS[nd.StandardScaler])
    np.testing.assert_allclose(y, sc.transform(X), rtol=1e-12, equal_nan=True)


def test_steps_that_need_whole_columns_say_the_fix():
    D = da.from_array(data(), chunks=(500, 5))
    for est in (nd.RobustScaler(), nd.QuantileTransformer(), nd.PowerTransformer()):
        with pytest.raises(TypeError, match=r"X\[::k\]\.compute\(\)"):
            est.fit(D)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        nd.StandardScaler().fit(D[D[:, 1] > 1e3])
