"""Dask input: fit out of core in one pass, transform lazily.

``fit``/``partial_fit`` of a mergeable scaler on a ``dask.array`` (or ``dask.dataframe``)
computes every block's exact statistics where the block lives (a worker of the current
scheduler, ``dask.distributed`` included), merges them pairwise in a tree of tasks and
publishes the result: one pass over the data, no block ever gathered, and the statistics of
one ``fit`` on the whole array (the merge is exact). ``transform`` returns a lazy dask array
(the scaler applied block by block). dask is imported only when dask input is seen.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

__all__ = ["as_dask_array", "blockwise", "check_dask_features", "dask_partial_fit", "is_dask"]


def is_dask(X: Any) -> bool:
    """True for a dask collection (array or dataframe), without importing dask."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "__dask_graph__")


def as_dask_array(X: Any, who: str) -> tuple[Any, list[str] | None]:
    """A 2-D dask array with all columns in one chunk (blocks split rows only), and the
    column names of a dask dataframe (None for an array)."""
    names = None
    if hasattr(X, "to_dask_array"):
        names = [str(c) for c in X.columns]
        X = X.to_dask_array(lengths=True)
    if X.ndim != 2:
        raise ValueError(
            f"{who} expects a 2D dask array of shape (n_samples, n_features), got {X.ndim}D "
            f"(shape {X.shape}); reshape it with X.reshape(-1, 1) for a single feature"
        )
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"{who} needs known block sizes of the dask array; call X.compute_chunk_sizes() "
            "(or to_dask_array(lengths=True) on a dataframe) first"
        )
    return X.rechunk({1: -1}), names


def check_dask_features(est: Any, X: Any, *, reset: bool) -> Any:
    """``X`` as a dask array (:func:`as_dask_array`) after scikit-learn's feature checks
    (count, and names of a dataframe), run on a one-row stand-in for its columns: nothing is
    computed."""
    from normkit.data._arrays import check_input

    arr, names = as_dask_array(X, type(est).__name__)
    stand_in: Any = np.zeros((1, arr.shape[1]), dtype=arr.dtype)
    if names is not None:
        import pandas as pd  # type: ignore[import-untyped]

        stand_in = pd.DataFrame(stand_in, columns=names)
    check_input(est, stand_in, reset=reset)
    return arr


def _block_state(est: Any, block: np.ndarray, weight: Any) -> Any:
    """One block's statistics (runs where the block is): a parameter-only clone of ``est``
    validates the block and computes its state, exactly as ``partial_fit`` would."""
    from normkit.data._arrays import check_input, check_sample_weight

    twin = clone(est)
    batch = check_input(twin, block, reset=True, defer_finite=twin._defer_finite)
    return twin._batch_state(batch, check_sample_weight(weight, batch))


def dask_partial_fit(est: Any, X: Any, sample_weight: Any, first: bool) -> Any:
    """``est.partial_fit(X)`` for a dask ``X``: per-block exact states, merged in a tree of
    tasks, computed once on the current scheduler; then combined with what ``est`` knows."""
    import dask
    import torch

    who = type(est).__name__
    arr = check_dask_features(est, X, reset=first)
    blocks = arr.to_delayed().ravel()
    weights: list[Any] = [None] * len(blocks)
    if sample_weight is not None:
        import dask.array as da

        w = da.asarray(sample_weight)
        if w.ndim == 0:
            weights = [float(w.compute())] * len(blocks)
        else:
            if w.shape[0] != arr.shape[0]:
                raise ValueError(
                    f"sample_weight.shape == {tuple(w.shape)}, expected ({arr.shape[0]},)!"
                )
            weights = list(w.rechunk((arr.chunks[0],)).to_delayed().ravel())
    parts = [
        dask.delayed(_block_state)(est, b, wb)
        for b, wb, rows in zip(blocks, weights, arr.chunks[0], strict=True)
        if rows > 0
    ]
    if not parts:
        raise ValueError(f"Found array with 0 sample(s) while a minimum of 1 is required by {who}.")
    combine = dask.delayed(type(est)._combine)
    while len(parts) > 1:
        pairs = [combine(a, b) for a, b in zip(parts[0::2], parts[1::2], strict=False)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    (state,) = dask.compute(parts[0])
    with torch.no_grad():
        if first:
            est._state_device = None
        else:
            state = est._combine(est._read_state(est, torch.device("cpu")), state)
        est._publish(state)
    return est


def blockwise(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a ``transform``-like method: a dask input gets a lazy dask array of the
    method applied block by block (numpy blocks in, numpy blocks out); anything else the
    method itself."""

    @functools.wraps(method)
    def wrapper(self: Any, X: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_dask(X):
            return method(self, X, *args, **kwargs)
        check_is_fitted(self)
        arr, _ = as_dask_array(X, type(self).__name__)
        dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)

        def apply(block: np.ndarray) -> np.ndarray:
            return method(self, block, *args, **kwargs)

        return arr.map_blocks(apply, dtype=dtype, meta=np.empty((0, 0), dtype=dtype))

    return wrapper
