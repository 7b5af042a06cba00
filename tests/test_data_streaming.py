"""Exact streaming: partial_fit over any chunking = fit, merge = fit on the union,
fit_distributed over 2 gloo processes = fit on the concatenation. Oracles: scikit-learn's fit
on the full data and numpy float64 statistics."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import preprocessing as skp

import normkit.data as nd

STREAMING = [
    (nd.StandardScaler, skp.StandardScaler, ("mean_", "var_", "scale_", "n_samples_seen_")),
    (
        nd.MinMaxScaler,
        skp.MinMaxScaler,
        ("data_min_", "data_max_", "scale_", "min_", "n_samples_seen_"),
    ),
    (nd.MaxAbsScaler, skp.MaxAbsScaler, ("max_abs_", "scale_", "n_samples_seen_")),
]


def data(n: int, f: int, seed: int, nan_frac: float = 0.1, offset: float = 1e3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)) * rng.uniform(0.5, 5, f) + offset
    X[rng.random((n, f)) < nan_frac] = np.nan
    return X


def check_attrs(ours, want, names, rtol=1e-12):
    for name in names:
        a, b = getattr(ours, name), getattr(want, name)
        a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        np.testing.assert_allclose(a, np.asarray(b), rtol=rtol, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("ours, theirs, names", STREAMING, ids=lambda v: getattr(v, "__name__", ""))
@given(
    cuts=st.lists(st.integers(1, 199), max_size=6, unique=True),
    seed=st.integers(0, 2**16),
    tensors=st.booleans(),
)
@settings(max_examples=15, deadline=None)
def test_partial_fit_any_chunking_equals_fit(ours, theirs, names, cuts, seed, tensors):
    X = data(200, 4, seed)
    sc = ours()
    for chunk in np.split(X, sorted(cuts)):
        sc.partial_fit(torch.from_numpy(chunk) if tensors else chunk)
    check_attrs(sc, theirs().fit(X), names)


def test_partial_fit_float32_chunks_against_float64_statistics():
    """float32 data, 100 chunks: statistics are accumulated in float64 (numpy oracle)."""
    X = (np.random.default_rng(3).standard_normal((20_000, 3)) * 0.01 + 1e3).astype(np.float32)
    sc = nd.StandardScaler()
    for chunk in np.array_split(X, 100):
        sc.partial_fit(chunk)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(sc.mean_, X64.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sc.var_, X64.var(0), rtol=1e-9)


@pytest.mark.parametrize("path", ["numba", "torch"])
def test_large_chunks_both_moment_paths_match_float64(path, monkeypatch):
    """Chunks large enough for the numba kernel (when installed) and the torch fallback give
    the float64 statistics of the whole data (numpy oracle) and scikit-learn's outputs."""
    import normkit.data._arrays as A

    if path == "numba":
        pytest.importorskip("numba")
        assert A.serial_kernels() is not None
    else:
        monkeypatch.setattr(A, "SERIAL_MIN_NUMEL", 1 << 62)
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((30_000, 32)) * rng.uniform(0.01, 10, 32) + 500).astype(np.float32)
    sc = nd.StandardScaler()
    for chunk in np.array_split(X, 3):  # 10_000 x 32 = 320k elements per chunk
        sc.partial_fit(chunk)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(sc.mean_, X64.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sc.var_, X64.var(0), rtol=1e-11)
    ref = skp.StandardScaler().fit(X)
    np.testing.assert_array_equal(sc.transform(X[:100]), ref.transform(X[:100]))
    # a large chunk: bit for bit scikit-learn's transform and inverse, on either path
    ours = nd.StandardScaler().fit(X)
    np.testing.assert_array_equal(ours.transform(X), ref.transform(X))
    np.testing.assert_array_equal(ours.inverse_transform(X), ref.inverse_transform(X))
    a = X.copy()
    assert np.shares_memory(ours.transform(a, copy=False), a)
    np.testing.assert_array_equal(a, ref.transform(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_chunks_non_finite_values(dtype):
    """The kernels fold the NaN/inf check into their pass: inf raises (before anything is
    written, also in place), NaN is ignored in fit and kept in transform, as scikit-learn."""
    rng = np.random.default_rng(6)
    X = (rng.standard_normal((5_000, 16)) * 3 + 7).astype(dtype)
    bad = X.copy()
    bad[4000, 3] = np.inf
    for method in ("fit", "partial_fit", "transform", "inverse_transform"):
        sc = nd.StandardScaler().fit(X)
        with pytest.raises(ValueError, match="infinity"):
            getattr(sc, method)(bad)
    keep = bad.copy()
    with pytest.raises(ValueError, match="infinity"):
        nd.StandardScaler().fit(X).transform(bad, copy=False)
    np.testing.assert_array_equal(bad, keep)  # nothing written
    holes = X.copy()
    holes[rng.random(holes.shape) < 0.01] = np.nan
    ours, theirs = nd.StandardScaler().fit(holes), skp.StandardScaler().fit(holes)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.var_, theirs.var_, rtol=1e-10)
    np.testing.assert_allclose(ours.transform(holes), theirs.transform(holes), atol=1e-13)


@pytest.mark.parametrize("ours, theirs, names", STREAMING, ids=lambda v: getattr(v, "__name__", ""))
def test_merge_equals_fit_on_union(ours, theirs, names):
    A, B = data(150, 3, 1), data(77, 3, 2, offset=-50)
    full = theirs().fit(np.concatenate([A, B]))
    a, b = ours().fit(A), ours().fit(torch.from_numpy(B))
    before = {k: np.array(getattr(a, k), copy=True) for k in names}
    merged = a.merge(b)
    check_attrs(merged, full, names)
    assert isinstance(merged.scale_, np.ndarray)  # the type of self's attributes
    check_attrs(b.merge(a), full, names)
    assert isinstance(b.merge(a).scale_, torch.Tensor)
    for k, v in before.items():  # inputs untouched
        np.testing.assert_array_equal(np.asarray(getattr(a, k)), v)
    # a scikit-learn-fitted scaler of the same kind merges too
    check_attrs(a.merge(theirs().fit(B)), full, names)


def test_merge_rejects_mismatches():
    a = nd.StandardScaler().fit(data(10, 3, 0))
    with pytest.raises(ValueError, match="3 and 2 features"):
        a.merge(nd.StandardScaler().fit(data(10, 2, 0)))
    with pytest.raises(ValueError, match="equal parameters"):
        a.merge(nd.StandardScaler(with_mean=False).fit(data(10, 3, 0)))
    with pytest.raises(TypeError, match="needs another StandardScaler"):
        a.merge(nd.MinMaxScaler().fit(data(10, 3, 0)))


def test_fit_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        nd.StandardScaler().fit_distributed(np.ones((3, 2)))


# ----------------------------------------------------------------------------- distributed

WORLD = 2


def _shard(rank: int) -> np.ndarray:
    full = data(90, 3, 7)
    return full[:50] if rank == 0 else full[50:]  # unequal shards


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        X = _shard(rank)
        res = {}
        for name in ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"):
            sc = getattr(nd, name)()
            x = torch.from_numpy(X) if rank == 1 else X  # numpy on one rank, tensor on the other
            sc.fit_distributed(x)
            for attr in ("mean_", "var_", "scale_", "data_min_", "max_abs_", "center_"):
                v = getattr(sc, attr, None)
                if v is not None:
                    res[f"{name}.{attr}"] = v.numpy() if isinstance(v, torch.Tensor) else v
            res[f"{name}.n"] = np.asarray(getattr(sc, "n_samples_seen_", -1), dtype=float)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **res)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_fit_distributed_two_gloo_processes_equals_fit(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    full = np.concatenate([_shard(0), _shard(1)])
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(WORLD)]
    for name in ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"):
        want = getattr(skp, name)().fit(full)
        for res in ranks:
            for key, value in res.items():
                if key.startswith(name + ".") and key != name + ".n":
                    attr = key.split(".")[1]
                    np.testing.assert_allclose(value, getattr(want, attr), rtol=1e-12)
            if hasattr(want, "n_samples_seen_"):
                np.testing.assert_array_equal(res[name + ".n"], want.n_samples_seen_)
