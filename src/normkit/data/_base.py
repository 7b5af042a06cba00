"""The streaming machinery every mergeable scaler shares: ``partial_fit``, ``merge`` and
``fit_distributed`` are one pattern — *statistics of a batch → combine with what is known →
publish the scikit-learn attributes*.

A scaler subclass supplies four pure pieces over a *state* (a tuple of ``(F,)`` tensors):
``_batch_state`` (statistics of one validated batch), ``_read_state`` (the state back from the
fitted attributes, so a scikit-learn-fitted scaler can be merged too), ``_combine`` (exact,
associative) and ``_publish`` (set the fitted attributes). The combine is the only math; it runs
in the state's dtype (float64 for moments).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from normkit.data._arrays import ArrayLike, Batch, check_input, check_sample_weight
from normkit.data._dask import dask_partial_fit, is_dask
from normkit.data._sparse import SparseBatch, check_sparse_input, is_sparse

__all__ = ["State", "StreamingScaler", "all_gather_rows"]

State = tuple[Tensor, ...]


def _dist() -> Any:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "fit_distributed needs an initialized process group; call "
            "torch.distributed.init_process_group(backend='gloo' or 'nccl', ...) on every rank "
            "first (or use fit/partial_fit in a single process)"
        )
    return dist


def _comm_device(dist: Any, group: Any) -> torch.device:
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(x: Tensor, group: Any = None) -> list[Tensor]:
    """Every rank's ``x`` (same trailing shape, any number of rows), in rank order.

    Rows are padded to the largest rank's count for the collective and trimmed after.
    """
    dist = _dist()
    dev = _comm_device(dist, group)
    world = dist.get_world_size(group)
    shape = torch.tensor([x.shape[0], *x.shape[1:]], device=dev, dtype=torch.int64)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    sizes = [tuple(int(v) for v in s.tolist()) for s in shapes]
    if any(s[1:] != sizes[0][1:] for s in sizes):
        raise ValueError(
            "fit_distributed: ranks disagree on the number of features (rows, features per "
            f"rank: {sizes}); every rank must pass data with the same columns"
        )
    n_max = max(s[0] for s in sizes)
    padded = x.new_zeros((n_max, *x.shape[1:]), device=dev)
    padded[: x.shape[0]] = x.to(dev)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return [o[: s[0]] for o, s in zip(out, sizes, strict=True)]


class StreamingScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Base of the mergeable scalers (not public): fit / partial_fit / merge / fit_distributed.

    Fitted attributes are numpy arrays when the first fit saw numpy data (exactly
    scikit-learn's types) and tensors on the data's device when it saw tensors; later batches
    of either type are accepted.
    """

    _fitted: tuple[str, ...] = ()
    _takes_sparse = False  # scipy/torch sparse input accepted (with the right parameters)
    _defer_finite = False  # _batch_state checks NaN/inf itself (Batch.finite is None)
    _state_device: torch.device | None

    # -- hooks ---------------------------------------------------------------------------------
    def _check_params(self) -> None:
        """Validate the hyper-parameters as scikit-learn does: ``_parameter_constraints``
        (:class:`~sklearn.utils._param_validation.InvalidParameterError`, scikit-learn's
        messages), then the checks between parameters that constraints cannot express."""
        self._validate_params()

    def _check_sparse(self) -> None:
        """Raise scikit-learn's error when sparse input cannot be handled (with these
        parameters); scalers that keep sparsity override it."""
        raise TypeError(
            f"{type(self).__name__} does not support sparse input. Consider using "
            "MaxAbsScaler instead."
        )

    def _batch_state(self, batch: Batch | SparseBatch, weight: Tensor | None) -> State:
        raise NotImplementedError

    def _read_state(self, est: Any, device: torch.device) -> State:
        raise NotImplementedError

    @staticmethod
    def _combine(a: State, b: State) -> State:
        raise NotImplementedError

    def _publish(self, state: State) -> None:
        raise NotImplementedError

    # -- the pattern ---------------------------------------------------------------------------
    def _reset(self) -> None:
        for name in (*self._fitted, "n_samples_seen_"):
            if name in self.__dict__:
                delattr(self, name)

    def _fit(self, X: ArrayLike, sample_weight: Any = None) -> StreamingScaler:
        """``fit``: forget earlier fits, then one ``partial_fit``."""
        self._reset()
        return self._partial_fit(X, sample_weight)

    def _partial_fit(self, X: ArrayLike, sample_weight: Any = None) -> StreamingScaler:
        """``partial_fit``: the batch's state combined with what is known (exact merge).

        A dask array (or dataframe) is reduced block by block where it lives, in one pass
        (:func:`normkit.data._dask.dask_partial_fit`). A batch in which a feature is all NaN
        leaves that feature's statistics as they were
        (scikit-learn's ``partial_fit`` turns them into NaN for good), so every chunking of the
        data gives the statistics of one ``fit``.
        """
        self._check_params()
        first = not hasattr(self, "n_samples_seen_")
        if is_dask(X):
            return dask_partial_fit(self, X, sample_weight, first)
        if is_sparse(X):
            self._check_sparse()
            batch: Batch | SparseBatch = check_sparse_input(self, X, reset=first)
        else:
            batch = check_input(self, X, reset=first, defer_finite=self._defer_finite)
        weight = check_sample_weight(sample_weight, batch)
        with torch.no_grad():
            state = self._batch_state(batch, weight)
            if first:
                self._state_device = batch.device if batch.is_tensor else None
            else:
                state = self._combine(self._read_state(self, batch.device), state)
            self._publish(state)
        return self

    def merge(self, other: Any) -> StreamingScaler:
        """A new scaler fitted on the union of the data ``self`` and ``other`` saw.

        ``other`` is a fitted scaler of the same kind and parameters (normkit's, or
        scikit-learn's of the same name); neither input is modified. Exact: merging two scalers
        fitted on ``A`` and ``B`` equals fitting on ``concat(A, B)``, so workers can fit
        shards in parallel and combine the results.
        """
        check_is_fitted(self)
        check_is_fitted(other)
        if type(other).__name__ != type(self).__name__:
            raise TypeError(
                f"{type(self).__name__}.merge needs another {type(self).__name__} (got "
                f"{type(other).__name__})"
            )
        mine = {k: v for k, v in self.get_params().items() if k != "copy"}
        theirs = {k: v for k, v in other.get_params().items() if k in mine}
        if mine != theirs:
            raise ValueError(
                f"{type(self).__name__}.merge needs equal parameters (got {mine} and {theirs})"
            )
        if other.n_features_in_ != self.n_features_in_:
            raise ValueError(
                f"cannot merge scalers fitted on {self.n_features_in_} and "
                f"{other.n_features_in_} features"
            )
        device = self._state_device or torch.device("cpu")
        out = copy.deepcopy(self)
        with torch.no_grad():
            out._publish(
                self._combine(self._read_state(self, device), self._read_state(other, device))
            )
        return out

    def fit_distributed(self, X: ArrayLike, y: Any = None, *, group: Any = None) -> StreamingScaler:
        """Fit on the union of every rank's ``X`` over ``torch.distributed``.

        Each rank computes its batch statistics, they are all-gathered (a few ``(F,)`` rows
        per rank, CPU for gloo, CUDA for nccl) and combined in rank order, so every rank ends
        with the same scaler, equal to :meth:`fit` on the concatenated data. Collective: call it
        on every rank of ``group``; every rank needs at least one row.
        """
        _dist()
        self._reset()
        self._check_params()
        batch = check_input(self, X, reset=True)
        with torch.no_grad():
            local = self._batch_state(batch, None)
            packed = torch.stack([t.to(torch.float64) for t in local])
            parts = all_gather_rows(packed, group)
            states = [
                tuple(
                    row.to(device=t.device, dtype=t.dtype) for row, t in zip(p, local, strict=True)
                )
                for p in parts
            ]
            self._state_device = batch.x.device if batch.is_tensor else None
            self._publish(functools.reduce(self._combine, states))
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = self._takes_sparse
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
