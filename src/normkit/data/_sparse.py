"""Sparse input (scipy CSR/CSC, torch sparse COO/CSR) for the scalers that keep sparsity.

A sparse batch is its stored values with the row and column of each, plus a way to put new
values back into the caller's format; every statistic is a per-column (or per-row) scatter
reduction over the stored values that counts the implicit zeros analytically, so nothing is
densified. scipy input is validated by scikit-learn's ``validate_data`` (formats, dtypes,
feature counts and messages are scikit-learn's); its output has the format scikit-learn's
transform returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import FLOAT_DTYPES, check_array, validate_data
from torch import Tensor

from normkit._stats import Moments
from normkit.data._arrays import check_finite, from_numpy, promoted
from normkit.data._quantiles import interpolated_quantiles

__all__ = [
    "SparseBatch",
    "check_sparse_input",
    "is_sparse",
    "sparse_apply",
    "sparse_max_abs",
    "sparse_moments",
    "sparse_quantiles",
    "sparse_vector_norms",
]

_F64 = torch.float64


def is_sparse(X: Any) -> bool:
    """True for a scipy sparse matrix/array or a torch tensor with a sparse layout."""
    if isinstance(X, Tensor):
        return X.layout != torch.strided
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


@dataclass(frozen=True)
class SparseBatch:
    """A validated 2-D sparse input: ``values[k]`` sits at ``(rows[k], cols[k])``.

    ``rebuild(values)`` returns a sparse matrix/tensor of the caller's kind with the same
    structure and new values; ``writable`` is True when ``values`` may be written in place (a
    scipy matrix's ``data`` for ``copy=False``; then ``rebuild(values)`` returns the input).
    """

    values: Tensor
    rows: Tensor
    cols: Tensor
    shape: tuple[int, int]
    is_tensor: bool
    finite: bool
    writable: bool
    rebuild: Callable[[Tensor], Any]

    @property
    def n_samples(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device


def _scipy_batch(X: Any, who: str, allow_nan: bool) -> SparseBatch:
    data = from_numpy(X.data)
    index = torch.from_numpy(X.indices).to(torch.int64)
    counts = torch.from_numpy(np.diff(X.indptr)).to(torch.int64)
    outer = torch.repeat_interleave(torch.arange(len(counts)), counts)
    rows, cols = (outer, index) if X.format == "csr" else (index, outer)

    def rebuild(v: Tensor) -> Any:
        if v is data:  # written in place (copy=False)
            return X
        return type(X)((v.numpy(), X.indices.copy(), X.indptr.copy()), shape=X.shape)

    finite = check_finite(data, who, allow_nan)
    return SparseBatch(data, rows, cols, X.shape, False, finite, X.data.flags.writeable, rebuild)


def _torch_batch(x: Tensor, who: str, allow_nan: bool) -> SparseBatch:
    if x.ndim != 2:
        raise ValueError(
            f"Expected a 2D sparse tensor of shape (n_samples, n_features), got {x.ndim}D "
            f"(shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.layout == torch.sparse_csr:
        crow, cols, values = x.crow_indices(), x.col_indices().to(torch.int64), x.values()
        rows = torch.repeat_interleave(
            torch.arange(x.shape[0], device=x.device), crow.diff().to(torch.int64)
        )

        def rebuild(v: Tensor) -> Tensor:
            return torch.sparse_csr_tensor(
                crow, x.col_indices(), v, tuple(x.shape), check_invariants=False
            )

    else:
        if x.layout != torch.sparse_coo:
            x = x.to_sparse_coo()
        x = x.coalesce()
        indices, values = x.indices(), x.values()
        rows, cols = indices[0], indices[1]

        def rebuild(v: Tensor) -> Tensor:
            return torch.sparse_coo_tensor(
                indices, v, tuple(x.shape), is_coalesced=True, check_invariants=False
            )

    finite = check_finite(values, who, allow_nan)
    return SparseBatch(values, rows, cols, (x.shape[0], x.shape[1]), True, finite, False, rebuild)


def check_sparse_input(
    est: Any,
    X: Any,
    *,
    reset: bool,
    accept: tuple[str, ...] = ("csr", "csc"),
    allow_nan: bool = True,
    check_features: bool = True,
) -> SparseBatch:
    """Validate a sparse ``X`` for ``est`` as scikit-learn does and return a :class:`SparseBatch`.

    scipy input goes through scikit-learn's ``validate_data`` (other formats are converted to
    the first of ``accept``, integers to float64); torch COO and CSR tensors are checked with
    the same rules (other sparse layouts become COO), on their device.
    """
    who = type(est).__name__
    if isinstance(X, Tensor):
        if check_features:
            validate_data(est, X, reset=reset, skip_check_array=True)
        return _torch_batch(X, who, allow_nan)
    kwargs: dict[str, Any] = {
        "accept_sparse": accept,
        "dtype": FLOAT_DTYPES,
        "ensure_all_finite": False,
    }
    X = validate_data(est, X, reset=reset, **kwargs) if check_features else check_array(X, **kwargs)
    return _scipy_batch(X, who, allow_nan)


# ----------------------------------------------------------------------------- statistics


def _per_column(sb: SparseBatch, v: Tensor, reduce: str = "sum", init: float = 0.0) -> Tensor:
    """``v`` (one value per stored entry) reduced per column into ``(n_features,)``."""
    out = torch.full((sb.shape[1],), init, dtype=v.dtype, device=v.device)
    if reduce == "sum":
        return out.index_add_(0, sb.cols, v)
    return out.scatter_reduce_(0, sb.cols, v, reduce)


def sparse_moments(sb: SparseBatch, weight: Tensor | None) -> tuple[Moments, Tensor, Tensor]:
    """Per-column (weighted) count, mean and sum of squared deviations in float64, the implicit
    zeros included analytically: each column's ``M2`` adds ``w_zeros · mean²``.

    Also returns each column's smallest and largest counted value (implicit zeros included),
    which decide exactly which columns are constant.
    """
    v = sb.values.to(_F64)
    n = sb.n_samples
    we = torch.ones_like(v) if weight is None else weight.to(device=v.device, dtype=_F64)[sb.rows]
    total = float(n) if weight is None else float(weight.sum())
    stored = _per_column(sb, we)  # weight of the stored entries, NaN ones included
    valid = ~torch.isnan(v)
    if weight is not None:
        valid &= we != 0
    zero = torch.zeros((), dtype=_F64, device=v.device)
    v = torch.where(valid, v, zero)
    wv = torch.where(valid, we, zero)
    nan_weight = _per_column(sb, torch.where(torch.isnan(sb.values.to(_F64)), we, zero))
    count = total - nan_weight
    mean = torch.where(count != 0, _per_column(sb, wv * v) / count, zero)
    implicit = total - stored
    m2 = _per_column(sb, wv * (v - mean[sb.cols]).square()) + implicit * mean.square()
    # smallest/largest counted value per column, implicit zeros (of nonzero weight) included
    inf = float("inf")
    lo = _per_column(sb, torch.where(valid, v, inf), "amin", inf)
    hi = _per_column(sb, torch.where(valid, v, -inf), "amax", -inf)
    rows_nz = n if weight is None else int((weight != 0).sum())
    has_zeros = rows_nz - _per_column(sb, (we != 0).to(_F64)) > 0
    lo = torch.where(has_zeros, lo.clamp_max(0.0), lo)
    hi = torch.where(has_zeros, hi.clamp_min(0.0), hi)
    return Moments(count, mean, m2), lo, hi


def sparse_max_abs(sb: SparseBatch) -> Tensor:
    """Per-column maximum absolute value in the data's dtype (NaNs ignored; implicit zeros
    make it at least 0)."""
    a = sb.values.abs()
    a = torch.where(torch.isnan(a), torch.zeros((), dtype=a.dtype, device=a.device), a)
    return _per_column(sb, a, "amax", 0.0)


def sparse_quantiles(sb: SparseBatch, qs: list[float]) -> list[Tensor]:
    """Per-column quantiles (numpy's ``linear`` method, NaNs ignored) of the columns with their
    implicit zeros, as scikit-learn's ``RobustScaler`` computes them on sparse input, without
    densifying: the stored values are sorted per column and the zeros are virtual.

    A column's sorted values are its ``a`` stored negatives, then ``z`` implicit zeros, then
    its stored non-negatives; element ``k`` is read from the sorted stored values or is 0.
    """
    n_rows, n_features = sb.shape
    v = sb.values
    # sort by (column, value): value first, then a stable sort by column; NaNs sort last
    order = torch.sort(v, stable=True).indices
    order = order[torch.sort(sb.cols[order], stable=True).indices]
    sv, sc = v[order], sb.cols[order]
    per_col = torch.bincount(sc, minlength=n_features)
    offset = torch.cumsum(per_col, 0) - per_col
    nan = _per_column(sb, torch.isnan(v).to(torch.int64))
    neg = _per_column(sb, (v < 0).to(torch.int64))
    zeros = n_rows - per_col
    n = (n_rows - nan).to(_F64)

    def pick(k: Tensor) -> Tensor:
        stored = torch.where(k < neg, k, k - zeros)
        idx = (offset + stored).clamp(0, max(len(sv) - 1, 0))
        got = sv[idx] if len(sv) else torch.zeros(n_features, dtype=v.dtype)
        is_zero = (k >= neg) & (k < neg + zeros)
        return torch.where(is_zero, torch.zeros((), dtype=v.dtype, device=v.device), got)

    return interpolated_quantiles(pick, n, v.dtype, qs)[1]


def sparse_vector_norms(sb: SparseBatch, norm: str, axis: int) -> Tensor:
    """Norm of every row (``axis=1``) or column (``axis=0``) over the stored values (0 for an
    all-zero vector), in the data's dtype as scikit-learn computes sparse norms."""
    group = sb.rows if axis == 1 else sb.cols
    v = sb.values
    out = torch.zeros(sb.shape[1 - axis], dtype=v.dtype, device=v.device)
    if norm == "l1":
        return out.index_add_(0, group, v.abs())
    if norm == "l2":
        return out.index_add_(0, group, v.square()).sqrt_()
    return out.scatter_reduce_(0, group, v.abs(), "amax")


def sparse_apply(
    sb: SparseBatch, op: Any, factor: Tensor, *, inplace: bool, axis: int = 0
) -> Tensor:
    """New stored values ``op(values, factor[col])`` (``factor[row]`` for ``axis=1``) computed
    in the promoted dtype and rounded to the data's (scikit-learn's ``inplace_column_scale`` and
    row normalization); written into the input's values when ``inplace`` and they may be.
    ``sb.rebuild`` turns them into the caller's format."""
    f = factor.to(sb.device)[sb.rows if axis == 1 else sb.cols]
    return promoted(sb.values, op, f, inplace=inplace and sb.writable)
