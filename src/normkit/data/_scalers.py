"""The scalers: ``StandardScaler``, ``MinMaxScaler``, ``MaxAbsScaler``, ``RobustScaler``,
``Normalizer`` and the functional ``normalize`` — scikit-learn's API and numbers, on numpy
arrays and torch tensors (any device)."""

from __future__ import annotations

import dataclasses
import statistics
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils._param_validation import Options, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import FLOAT_DTYPES, check_array, check_is_fitted
from torch import Tensor

from normkit._stats import Moments, accumulation_dtype, merge_moments
from normkit.data._arrays import (
    ArrayLike,
    Batch,
    as_output,
    check_finite,
    check_input,
    check_inverse_input,
    from_numpy,
    numpy_view,
    promoted,
    serial_kernels,
    serial_view,
    to_attr,
    to_tensor,
)
from normkit.data._base import State, StreamingScaler, all_gather_rows
from normkit.data._dask import blockwise, check_dask_features, is_dask
from normkit.data._quantiles import interpolated_quantiles
from normkit.data._sparse import (
    SparseBatch,
    check_sparse_input,
    is_sparse,
    sparse_apply,
    sparse_max_abs,
    sparse_moments,
    sparse_quantiles,
    sparse_vector_norms,
)
from normkit.nn.normalization import handle_zeros_in_scale, std_scale

__all__ = [
    "MaxAbsScaler",
    "MinMaxScaler",
    "Normalizer",
    "RobustScaler",
    "StandardScaler",
    "normalize",
]

_F64 = torch.float64


def _in_place(est: Any, copy: bool | None, batch: Batch) -> bool:
    """Whether a transform writes into its input: ``copy`` (the call's, else the estimator's)
    is False and the input may be written (:attr:`Batch.writable`)."""
    copy = est.copy if copy is None else copy
    return not copy and batch.writable


def _sparse_scale(
    sb: SparseBatch, copy: bool, scale: Any, *, invert: bool = False, clip: bool = False
) -> Any:
    """A sparse batch with every column multiplied by ``scale`` (by ``1 / scale`` when
    ``invert``, the reciprocal taken in the scale's dtype: scikit-learn's
    ``inplace_column_scale``), optionally clipped to [-1, 1]; in the input when ``copy`` is
    False and it may be written. ``scale=None`` multiplies by 1."""
    inplace = not copy
    if scale is None:
        values = sb.values if inplace and sb.writable else sb.values.clone()
    else:
        s = to_tensor(scale, sb.device)
        values = sparse_apply(sb, torch.mul, 1.0 / s if invert else s, inplace=inplace)
    if clip:
        values = values.clamp_(-1.0, 1.0)
    return sb.rebuild(values)


def _counts(n: Any, n_features: int, device: torch.device) -> Tensor:
    """``n_samples_seen_`` (scalar or per feature) as a float64 ``(F,)`` tensor."""
    return to_tensor(np.asarray(n), device, _F64).expand(n_features).clone()


def _publish_counts(count: Tensor, dtype: Any) -> Any:
    """scikit-learn's ``n_samples_seen_``: one number when equal for all features, else an array."""
    c = count.detach().cpu().numpy().astype(dtype)
    return c[0] if c.min() == c.max() else c


# ============================================================================ StandardScaler


def _serial_moments(x: Tensor) -> Moments | None:
    """Moments of a CPU float32/float64 batch by the single-threaded Numba kernel (float64
    accumulation over cache-sized row blocks merged by Chan's rule, one pass of memory, the
    finiteness check folded in); None when the kernel cannot take the batch or met a NaN or
    inf (the caller then checks and takes the masked path)."""
    arr, k = serial_view(x), serial_kernels()
    if arr is None or k is None:
        return None
    mean, m2 = np.empty(arr.shape[1]), np.empty(arr.shape[1])
    if not k.moments_rows(arr, mean, m2):
        return None
    count = torch.full((arr.shape[1],), float(arr.shape[0]), dtype=_F64)
    return Moments(count, torch.from_numpy(mean), torch.from_numpy(m2))


def _weighted_moments(x: Tensor, w: Tensor, keep: Tensor | None) -> Moments:
    """Weighted count (sum of weights), mean and sum of weighted squared deviations per column,
    two passes in float64; ``keep`` masks out NaNs (None when there are none)."""
    xa = x.to(_F64)
    zero = torch.zeros((), dtype=_F64, device=x.device)
    if keep is None:
        count = w.sum().expand(x.shape[1])
    else:
        xa = torch.where(keep, xa, zero)
        count = w @ keep.to(_F64)
    mean = torch.where(count != 0, (w @ xa) / count, zero)
    dev = xa - mean
    if keep is not None:
        dev = torch.where(keep, dev, zero)
    return Moments(count, mean, w @ dev.square_())


def _settle_constants(m: Moments, lo: Tensor, hi: Tensor) -> Moments:
    """``m`` with ``m2 = 0`` and ``mean = lo`` exactly where a column's smallest and largest
    counted values are equal (``lo``/``hi`` may be NaN for columns not checked).

    Rounding leaves a column of identical values ``c`` with a mean an ulp away from ``c`` and
    a variance of ~1e-34 (scikit-learn's corrected two-pass estimate gives exactly 0). The fix
    survives every merge: Chan's update of two parts with the same exact mean adds exactly 0.
    """
    const = (lo == hi) & (m.count != 0)
    if not bool(const.any()):
        return m
    zero = torch.zeros((), dtype=_F64, device=m.m2.device)
    return Moments(m.count, torch.where(const, lo.to(_F64), m.mean), torch.where(const, zero, m.m2))


def _exact_constants(x: Tensor, m: Moments, keep: Tensor | None, w: Tensor | None) -> Moments:
    """:func:`_settle_constants` for a dense batch. Only columns whose ``m2`` is within the
    two-pass rounding bound ``count·(n·ε·|mean|)²`` are candidates; their min and max over the
    values that count (not NaN, nonzero weight) are compared exactly."""
    eps = torch.finfo(_F64).eps
    bound = m.count * (x.shape[0] * eps * m.mean.abs()).square()
    idx = torch.nonzero((m.m2 <= bound) & (m.count != 0)).flatten()
    if idx.numel() == 0:
        return m
    sub = x[:, idx]
    valid = None if keep is None else keep[:, idx]
    if w is not None:
        nz = (w != 0)[:, None]
        valid = nz if valid is None else valid & nz
    lo, hi = sub, sub
    if valid is not None:
        lo = torch.where(valid, sub, torch.full((), float("inf"), dtype=x.dtype, device=x.device))
        hi = torch.where(valid, sub, torch.full((), -float("inf"), dtype=x.dtype, device=x.device))
    nan = torch.full_like(m.mean, float("nan"))
    return _settle_constants(
        m, nan.index_copy(0, idx, lo.amin(0).to(_F64)), nan.index_copy(0, idx, hi.amax(0).to(_F64))
    )


def _batch_moments(batch: Batch, weight: Tensor | None = None) -> Moments:
    """Count, mean and sum of squared deviations per column of a batch, in float64; with
    ``weight``, the weighted ones (count = sum of the weights).

    The two-pass estimator of :func:`normkit._stats.moments` (mean first, then the squared
    deviations from it). Without NaNs or weights, a large CPU batch goes to the single-threaded
    Numba kernel when numba is installed (:func:`_serial_moments`), anything else runs in place
    on one float64 copy of the batch (three passes instead of five); with NaNs, the masked
    :meth:`Moments.of`. Constant columns get exactly ``m2 = 0`` (:func:`_exact_constants`).
    """
    x = batch.x
    keep = None if batch.finite else ~torch.isnan(x)
    if weight is not None:
        m = _weighted_moments(x, weight, keep)
    elif keep is None:
        fast = _serial_moments(x)
        if fast is not None:
            m = fast
        else:
            xa = x.to(_F64, copy=True)
            n = x.shape[0]
            mean = xa.sum(0) / n
            m2 = xa.sub_(mean).square_().sum(0)
            m = Moments(torch.full_like(mean, n), mean, m2)
    else:
        filled = torch.where(keep, x.to(_F64), torch.zeros((), dtype=_F64, device=x.device))
        mk = Moments.of(filled, [0], mask=keep)
        m = Moments(mk.count[0], mk.mean[0], mk.m2[0])
    return _exact_constants(x, m, keep, weight)


try:  # scikit-learn >= 1.9: fit callbacks (``set_callbacks``)
    from sklearn.callback import CallbackSupportMixin, with_callbacks
except ImportError:  # older scikit-learn: no callbacks

    class CallbackSupportMixin:  # type: ignore[no-redef]
        """Stands for scikit-learn's callback mixin where scikit-learn has none."""

    def with_callbacks(method: Any) -> Any:
        return method


class StandardScaler(CallbackSupportMixin, StreamingScaler):
    """Standardize features: remove the mean and scale to unit variance (scikit-learn's
    ``StandardScaler``, on numpy arrays and torch tensors).

    .. math:: z = \\frac{x - \\mu}{\\sigma}, \\qquad \\sigma = \\sqrt{\\tfrac1n \\textstyle\\sum (x-\\mu)^2}

    Statistics are accumulated in float64 and merged exactly across :meth:`partial_fit` chunks,
    :meth:`merge` d scalers and :meth:`fit_distributed` ranks (Chan, Golub & LeVeque, "Updating
    formulae and a pairwise algorithm for computing sample variances", 1979): any chunking gives
    the statistics of one :meth:`fit` up to float64 rounding. ``sample_weight`` gives the
    weighted mean and variance (``n_samples_seen_`` is then the sum of the weights), merged as
    exactly. NaNs are ignored in fit (counted per feature in ``n_samples_seen_``) and kept in
    transform; a constant feature has ``var_`` exactly 0, and a feature whose variance is
    indistinguishable from 0 gets ``scale_ = 1`` (scikit-learn's rule,
    :func:`normkit.nn.normalization.std_scale`). ``copy=False`` scales in place where the
    input allows it.

    Output type follows the input: numpy → numpy (float32 stays float32), tensor → tensor on
    the same device and dtype (float16/bfloat16 computed in float32), differentiable. Sparse
    input (scipy CSR/CSC, torch sparse COO/CSR) needs ``with_mean=False`` and stays sparse;
    its variance counts the implicit zeros without densifying.

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted attributes (scikit-learn's names, numpy
    float64 after a numpy fit, float64 tensors on the data's device after a tensor fit):
    ``mean_``, ``var_``, ``scale_`` (None where disabled), ``n_samples_seen_``,
    ``n_features_in_``.

    >>> sc = StandardScaler()
    >>> for chunk in torch.randn(10_000, 4).split(1000):
    ...     _ = sc.partial_fit(chunk)
    >>> z = sc.transform(torch.randn(5, 4))       # tensor in, tensor out
    """

    _fitted = ("mean_", "var_", "scale_")
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "copy": ["boolean"],
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
    }

    def __init__(self, *, copy: bool = True, with_mean: bool = True, with_std: bool = True) -> None:
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std

    @with_callbacks
    def fit(
        self, X: ArrayLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> StandardScaler:
        """Compute the mean and variance of ``X`` (n_samples, n_features); forgets earlier fits.

        ``sample_weight`` (n_samples,): one weight per sample (None: all 1); the statistics
        are then the weighted mean and variance, and ``n_samples_seen_`` the sum of the weights.
        With scikit-learn >= 1.9, callbacks set by ``set_callbacks`` see the fit as one task.
        """
        self._reset()
        return self._fit_task(X, y, sample_weight)

    @with_callbacks
    def partial_fit(
        self, X: ArrayLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> StandardScaler:
        """Add the batch ``X`` (with its ``sample_weight``) to the statistics, exactly: any
        chunking, weighted or not, gives the statistics of one :meth:`fit`."""
        return self._fit_task(X, y, sample_weight)

    def _fit_task(self, X: ArrayLike, y: Any, sample_weight: Any) -> StandardScaler:
        """One ``partial_fit``, announced to scikit-learn's callbacks (where scikit-learn has
        them) as its ``StandardScaler`` announces it: one task, with the sample weights."""
        if not hasattr(self, "_init_callback_context"):
            return self._partial_fit(X, sample_weight)
        ctx = self._init_callback_context()
        task = {"estimator": self, "X": X, "y": y, "metadata": {"sample_weight": sample_weight}}
        ctx.call_on_fit_task_begin(**task)
        self._partial_fit(X, sample_weight)
        ctx.call_on_fit_task_end(**task, reconstruction_attributes={})
        return self

    @property
    def _takes_sparse(self) -> bool:  # type: ignore[override]
        return not self.with_mean

    def _check_sparse(self) -> None:
        if self.with_mean:
            raise ValueError(
                "Cannot center sparse matrices: pass `with_mean=False` instead. See docstring "
                "for motivation and alternatives."
            )

    _defer_finite = True  # the moments kernel checks while it reads

    def _batch_state(self, batch: Batch | SparseBatch, weight: Tensor | None) -> State:
        if isinstance(batch, SparseBatch):
            m = _settle_constants(*sparse_moments(batch, weight))
        else:
            fast = _serial_moments(batch.x) if batch.finite is None and weight is None else None
            if fast is not None:
                m = _exact_constants(batch.x, fast, None, None)
            else:
                if batch.finite is None:
                    finite = check_finite(batch.x, type(self).__name__, allow_nan=True)
                    batch = dataclasses.replace(batch, finite=finite)
                m = _batch_moments(batch, weight)
        return (m.count, m.mean, m.m2)

    def _serial_affine(self, batch: Batch, inplace: bool, *, inverse: bool) -> Tensor | None:
        """:meth:`transform` (or the inverse) by the single-threaded Numba kernel, bit for bit
        scikit-learn's, the inf check folded into the pass; None when the kernel cannot take
        the batch."""
        arr, k = serial_view(batch.x), serial_kernels()
        if arr is None or k is None:
            return None
        n_features = arr.shape[1]
        mean = (
            to_tensor(self.mean_, batch.x.device, batch.x.dtype).numpy()
            if self.with_mean
            else np.zeros(n_features, dtype=arr.dtype)
        )
        scale = (
            to_tensor(self.scale_, batch.x.device, batch.x.dtype).numpy()
            if self.with_std
            else np.ones(n_features, dtype=arr.dtype)
        )
        mean, scale = np.broadcast_to(mean, n_features), np.broadcast_to(scale, n_features)
        if inplace:  # check before writing into the caller's data
            if not np.isfinite(k.column_sums(arr)):
                check_finite(batch.x, type(self).__name__, allow_nan=True)
            k.affine_rows(arr, mean, scale, arr, inverse)
            return batch.x
        out = np.empty_like(arr)
        if not np.isfinite(k.affine_rows(arr, mean, scale, out, inverse)):
            check_finite(batch.x, type(self).__name__, allow_nan=True)  # raises on inf
        return torch.from_numpy(out)

    def _read_state(self, est: Any, device: torch.device) -> State:
        n_features = int(est.n_features_in_)
        count = _counts(est.n_samples_seen_, n_features, device)
        mean_ = getattr(est, "mean_", None)
        var_ = getattr(est, "var_", None)
        mean = torch.zeros(n_features, dtype=_F64, device=device)
        m2 = torch.zeros_like(mean)
        if mean_ is not None:
            mean = to_tensor(mean_, device, _F64).expand(n_features)
        if var_ is not None:
            m2 = to_tensor(var_, device, _F64).expand(n_features) * count
        seen = count > 0  # features with no value yet are published as NaN; neutral here
        return (count, torch.where(seen, mean, 0.0), torch.where(seen, m2, 0.0))

    @staticmethod
    def _combine(a: State, b: State) -> State:
        m = merge_moments([Moments(*a), Moments(*b)])
        return (m.count, m.mean, m.m2)

    def _publish(self, state: State) -> None:
        count, mean, m2 = state
        dev = self._state_device
        # scikit-learn 1.9's types: float64 counts from the moments, int64 when none are kept
        kept = self.with_mean or self.with_std
        self.n_samples_seen_ = _publish_counts(count, np.float64 if kept else np.int64)
        nan = torch.full_like(mean, float("nan"))
        mean = torch.where(count > 0, mean, nan)
        var = torch.where(count > 0, Moments(count, mean, m2).var, nan)
        self.mean_ = to_attr(mean, dev) if kept else None
        self.var_ = to_attr(var, dev) if self.with_std else None
        self.scale_ = to_attr(std_scale(var, mean, count), dev) if self.with_std else None

    @blockwise
    def transform(self, X: ArrayLike, copy: bool | None = None) -> np.ndarray | Tensor:
        """Standardize ``X``: ``(X − mean_) / scale_`` (NaNs kept). ``copy=False`` (or the
        scaler's ``copy=False``) writes the result into ``X`` where it can: a writable numpy
        float array, or a tensor outside autograd; otherwise a new array/tensor is returned."""
        check_is_fitted(self)
        if is_sparse(X):
            self._check_sparse()
            sb = check_sparse_input(self, X, reset=False, accept=("csr",))
            return _sparse_scale(sb, self.copy if copy is None else copy, self.scale_, invert=True)
        batch = check_input(self, X, reset=False, defer_finite=True)
        inplace = _in_place(self, copy, batch)
        fast = self._serial_affine(batch, inplace, inverse=False)
        if fast is not None:
            return as_output(fast, batch)
        x = batch.x
        check_finite(x, type(self).__name__, allow_nan=True)
        cd = accumulation_dtype(x.dtype)
        y = x if inplace and cd == x.dtype else x.to(cd, copy=True)
        if self.with_mean:
            y.sub_(to_tensor(self.mean_, x.device, cd))
        if self.with_std:
            y.div_(to_tensor(self.scale_, x.device, cd))
        if y is not x:
            y = x.copy_(y) if inplace else y.to(x.dtype)
        return as_output(y, batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike, copy: bool | None = None) -> np.ndarray | Tensor:
        """Undo :meth:`transform`: ``X · scale_ + mean_`` (``copy`` as in :meth:`transform`)."""
        check_is_fitted(self)
        if is_sparse(X):
            self._check_sparse()
            sb = check_sparse_input(self, X, reset=False, accept=("csr",), check_features=False)
            return _sparse_scale(sb, self.copy if copy is None else copy, self.scale_)
        batch = check_inverse_input(self, X, defer_finite=True)
        inplace = _in_place(self, copy, batch)
        fast = self._serial_affine(batch, inplace, inverse=True)
        if fast is not None:
            return as_output(fast, batch)
        x = batch.x
        check_finite(x, type(self).__name__, allow_nan=True)
        cd = accumulation_dtype(x.dtype)
        y = x if inplace and cd == x.dtype else x.to(cd, copy=True)
        if self.with_std:
            y.mul_(to_tensor(self.scale_, x.device, cd))
        if self.with_mean:
            y.add_(to_tensor(self.mean_, x.device, cd))
        if y is not x:
            y = x.copy_(y) if inplace else y.to(x.dtype)
        return as_output(y, batch)


# ============================================================================ Min/MaxAbs


def _nan_extreme(x: Tensor, finite: bool | None, *, largest: bool) -> Tensor:
    """Column-wise max (``largest``) or min ignoring NaNs; NaN where a column is all NaN."""
    arr = numpy_view(x)
    if arr is not None:  # single-threaded; fmax/fmin skip NaN unless a column is all NaN
        if finite:
            return torch.from_numpy(arr.max(0) if largest else arr.min(0))
        return torch.from_numpy((np.fmax if largest else np.fmin).reduce(arr, axis=0))
    if finite:
        return x.amax(0) if largest else x.amin(0)
    nan = torch.isnan(x)
    fill = float("-inf") if largest else float("inf")
    r = torch.where(nan, torch.full((), fill, dtype=x.dtype, device=x.device), x)
    r = r.amax(0) if largest else r.amin(0)
    return torch.where(nan.all(0), torch.full_like(r, float("nan")), r)


_NUMPY_OPS = {
    torch.mul: np.multiply,
    torch.add: np.add,
    torch.sub: np.subtract,
    torch.div: np.divide,
}


def _affine(
    batch: Batch,
    copy: bool,
    *steps: tuple[Any, Any],
    clip: tuple[float, float] | None = None,
) -> Tensor:
    """``x op₁ v₁ op₂ v₂ …`` for fitted attributes ``vᵢ`` (None skips a step), each step
    computed in the promoted dtype and rounded to the input's dtype as scikit-learn's in-place
    numpy ops do, then clamped to ``clip``; in the input's memory when ``copy`` is False and it
    may be written, else in a new tensor (also when every step is skipped).

    A CPU float32/float64 batch outside autograd runs on numpy's ufuncs, single-threaded and
    bit for bit scikit-learn's (torch's elementwise ops would use its thread pool).
    """
    x = batch.x
    inplace = not copy and batch.writable
    arr = numpy_view(x)
    if arr is not None:
        out = arr if inplace else None
        for op, value in steps:
            if value is not None:
                v = to_tensor(value, x.device).numpy()
                out = _NUMPY_OPS[op](arr if out is None else out, v, out=out, casting="same_kind")
                out = out.astype(arr.dtype, copy=False)
        out = arr.copy() if out is None else out
        if clip is not None:
            np.clip(out, clip[0], clip[1], out=out)
        return x if out is arr else torch.from_numpy(out)
    y = x
    for op, value in steps:
        if value is None:
            continue
        own = inplace or (y is not x and not y.requires_grad)  # our own fresh tensor
        y = promoted(y, op, to_tensor(value, x.device), inplace=own)
    y = x.clone() if y is x and not inplace else y
    return y.clamp_(*clip) if clip is not None else y


class MinMaxScaler(StreamingScaler):
    """Rescale each feature to ``feature_range`` by its minimum and range (scikit-learn's
    ``MinMaxScaler``, on numpy arrays and torch tensors).

    .. math:: y = (x - \\min x)\\,\\frac{b - a}{\\max x - \\min x} + a, \\qquad (a, b) = \\text{feature\\_range}

    computed as scikit-learn does, ``y = x · scale_ + min_`` with
    ``scale_ = (b − a) / data_range_`` and ``min_ = a − data_min_ · scale_``. A constant feature
    (range below ``10·eps``) gets ``scale_ = b − a``. NaNs are ignored in fit and kept in
    transform; ``clip=True`` clamps transformed values to ``feature_range``. Min and max are
    exact, so :meth:`partial_fit`, :meth:`merge` and :meth:`fit_distributed` equal :meth:`fit`
    exactly. Statistics have the data's dtype (float32 data → float32 ``data_min_``, as
    scikit-learn).

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted attributes: ``data_min_``,
    ``data_max_``, ``data_range_``, ``scale_``, ``min_``, ``n_samples_seen_``.

    >>> mm = MinMaxScaler(feature_range=(-1, 1)).fit(np.array([[0.0], [5.0], [10.0]]))
    >>> mm.transform(np.array([[2.5]]))
    array([[-0.5]])
    """

    _fitted = ("data_min_", "data_max_", "data_range_", "scale_", "min_")
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "feature_range": [tuple],
        "copy": ["boolean"],
        "clip": ["boolean"],
    }

    def __init__(
        self, feature_range: tuple[float, float] = (0, 1), *, copy: bool = True, clip: bool = False
    ) -> None:
        self.feature_range = feature_range
        self.copy = copy
        self.clip = clip

    def _check_params(self) -> None:
        self._validate_params()
        fr = self.feature_range
        if len(fr) != 2 or not fr[0] < fr[1]:
            raise ValueError(
                "Minimum of desired feature range must be smaller than maximum. Got "
                f"{fr!r} (expected a pair (min, max) with min < max, e.g. (0, 1))"
            )

    def fit(self, X: ArrayLike, y: Any = None) -> MinMaxScaler:
        """Compute the per-feature minimum and maximum of ``X``; forgets earlier fits."""
        return self._fit(X)

    def partial_fit(self, X: ArrayLike, y: Any = None) -> MinMaxScaler:
        """Add the batch ``X`` to the minimum and maximum (exact: chunked = one :meth:`fit`)."""
        return self._partial_fit(X)

    def _batch_state(self, batch: Batch | SparseBatch, weight: Tensor | None) -> State:
        assert isinstance(batch, Batch)  # _check_sparse rejects sparse input before this
        x = batch.x
        lo = _nan_extreme(x, batch.finite, largest=False)
        hi = _nan_extreme(x, batch.finite, largest=True)
        return (torch.full(lo.shape, float(x.shape[0]), dtype=_F64, device=x.device), lo, hi)

    def _read_state(self, est: Any, device: torch.device) -> State:
        lo = to_tensor(est.data_min_, device)
        n = torch.full(lo.shape, float(est.n_samples_seen_), dtype=_F64, device=device)
        return (n, lo, to_tensor(est.data_max_, device))

    @staticmethod
    def _combine(a: State, b: State) -> State:
        dt = torch.promote_types(a[1].dtype, b[1].dtype)
        # fmin/fmax: a side that has seen only NaN so far does not poison the other
        lo = torch.fmin(a[1].to(dt), b[1].to(b[1].device, dt))
        hi = torch.fmax(a[2].to(dt), b[2].to(b[2].device, dt))
        return (a[0] + b[0], lo, hi)

    def _publish(self, state: State) -> None:
        n, lo, hi = state
        dev = self._state_device
        a, b = (
            torch.tensor(float(v), dtype=lo.dtype, device=lo.device) for v in self.feature_range
        )
        rng = hi - lo
        scale = (b - a) / handle_zeros_in_scale(rng)
        self.n_samples_seen_ = int(n[0].item())
        self.data_min_, self.data_max_ = to_attr(lo, dev), to_attr(hi, dev)
        self.data_range_ = to_attr(rng, dev)
        self.scale_ = to_attr(scale, dev)
        self.min_ = to_attr(a - lo * scale, dev)

    @blockwise
    def transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``X · scale_ + min_`` (clamped to ``feature_range`` when ``clip``); in place in
        ``X`` when ``copy=False`` and ``X`` may be written."""
        check_is_fitted(self)
        batch = check_input(self, X, reset=False)
        clip = (float(self.feature_range[0]), float(self.feature_range[1])) if self.clip else None
        y = _affine(batch, self.copy, (torch.mul, self.scale_), (torch.add, self.min_), clip=clip)
        return as_output(y, batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``(X − min_) / scale_``."""
        check_is_fitted(self)
        batch = check_inverse_input(self, X)
        y = _affine(batch, self.copy, (torch.sub, self.min_), (torch.div, self.scale_))
        return as_output(y, batch)


class MaxAbsScaler(StreamingScaler):
    """Scale each feature by its maximum absolute value, to ``[-1, 1]`` without shifting
    (scikit-learn's ``MaxAbsScaler``, on numpy arrays and torch tensors).

    .. math:: y = x / \\max |x|

    A zero column keeps ``scale_ = 1``; NaNs are ignored in fit and kept in transform;
    ``clip=True`` clamps to ``[-1, 1]``. Exact under :meth:`partial_fit`, :meth:`merge` and
    :meth:`fit_distributed`. Sparse input (scipy CSR/CSC, torch sparse COO/CSR) stays sparse.

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted: ``max_abs_``, ``scale_``,
    ``n_samples_seen_``.

    >>> MaxAbsScaler().fit_transform(np.array([[-2.0, 1.0], [1.0, 4.0]]))
    array([[-1.  ,  0.25],
           [ 0.5 ,  1.  ]])
    """

    _fitted = ("max_abs_", "scale_")
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "copy": ["boolean"],
        "clip": ["boolean"],
    }

    def __init__(self, *, copy: bool = True, clip: bool = False) -> None:
        self.copy = copy
        self.clip = clip

    def fit(self, X: ArrayLike, y: Any = None) -> MaxAbsScaler:
        """Compute the per-feature maximum absolute value of ``X``; forgets earlier fits."""
        return self._fit(X)

    def partial_fit(self, X: ArrayLike, y: Any = None) -> MaxAbsScaler:
        """Add the batch ``X`` to the maximum absolute values (exact)."""
        return self._partial_fit(X)

    _takes_sparse = True

    def _check_sparse(self) -> None:
        return None

    def _batch_state(self, batch: Batch | SparseBatch, weight: Tensor | None) -> State:
        if isinstance(batch, SparseBatch):
            m = sparse_max_abs(batch)
        elif numpy_view(batch.x) is not None:  # max |x| = max(max x, −min x), no |x| copy
            hi = _nan_extreme(batch.x, batch.finite, largest=True)
            lo = _nan_extreme(batch.x, batch.finite, largest=False)
            m = torch.fmax(hi, -lo)
        else:
            m = _nan_extreme(batch.x.abs(), batch.finite, largest=True)
        return (torch.full(m.shape, float(batch.n_samples), dtype=_F64, device=m.device), m)

    def _read_state(self, est: Any, device: torch.device) -> State:
        m = to_tensor(est.max_abs_, device)
        return (torch.full(m.shape, float(est.n_samples_seen_), dtype=_F64, device=device), m)

    @staticmethod
    def _combine(a: State, b: State) -> State:
        dt = torch.promote_types(a[1].dtype, b[1].dtype)
        return (a[0] + b[0], torch.fmax(a[1].to(dt), b[1].to(b[1].device, dt)))

    def _publish(self, state: State) -> None:
        n, m = state
        self.n_samples_seen_ = int(n[0].item())
        self.max_abs_ = to_attr(m, self._state_device)
        self.scale_ = to_attr(handle_zeros_in_scale(m), self._state_device)

    @blockwise
    def transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``X / scale_`` (clamped to ``[-1, 1]`` when ``clip``)."""
        check_is_fitted(self)
        if is_sparse(X):
            sb = check_sparse_input(self, X, reset=False)
            return _sparse_scale(sb, self.copy, self.scale_, invert=True, clip=self.clip)
        batch = check_input(self, X, reset=False)
        y = _affine(
            batch, self.copy, (torch.div, self.scale_), clip=(-1.0, 1.0) if self.clip else None
        )
        return as_output(y, batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``X · scale_``."""
        check_is_fitted(self)
        if is_sparse(X):
            sb = check_sparse_input(self, X, reset=False, check_features=False)
            return _sparse_scale(sb, self.copy, self.scale_)
        batch = check_inverse_input(self, X)
        return as_output(_affine(batch, self.copy, (torch.mul, self.scale_)), batch)


# ============================================================================ RobustScaler


def _nan_quantiles(x: Tensor, qs: list[float]) -> tuple[Tensor, list[Tensor]]:
    """Column-wise median and quantiles of ``x`` ignoring NaNs (numpy's ``nanmedian`` /
    ``nanpercentile``): one sort per column (NaNs sort last), then
    :func:`~normkit.data._quantiles.interpolated_quantiles`. No size limit (unlike
    ``torch.quantile``)."""
    xs = x.sort(dim=0).values
    n = (~torch.isnan(x)).sum(0).to(_F64)
    return interpolated_quantiles(lambda k: xs.gather(0, k[None])[0], n, x.dtype, qs)


class RobustScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale with statistics robust to outliers: remove the median and divide by the
    interquartile range (scikit-learn's ``RobustScaler``, on numpy arrays and torch tensors).

    .. math:: y = \\frac{x - \\operatorname{median}(x)}{Q_{q_{hi}}(x) - Q_{q_{lo}}(x)}

    quantiles by numpy's ``linear`` method, NaNs ignored in fit and kept in transform; a zero
    range scales by 1. ``unit_variance=True`` divides the scale by
    ``Φ⁻¹(q_hi) − Φ⁻¹(q_lo)`` so normally distributed data ends with unit variance.

    Streaming: there is no ``partial_fit`` — medians and quantiles have no exact summary of
    bounded size, and scikit-learn has none either. Fit on the full data (``fit`` sorts each
    column once; a GPU tensor is fine), or across processes with :meth:`fit_distributed`,
    which gathers the rows and is exact.

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted: ``center_``, ``scale_`` (None where
    disabled), ``n_features_in_``; ``center_`` in the data's dtype, ``scale_`` in float64, as in
    scikit-learn.

    >>> RobustScaler().fit(np.array([[1.0], [2.0], [3.0], [100.0]])).center_
    array([2.5])
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "with_centering": ["boolean"],
        "with_scaling": ["boolean"],
        "quantile_range": [tuple],
        "copy": ["boolean"],
        "unit_variance": ["boolean"],
    }

    def __init__(
        self,
        *,
        with_centering: bool = True,
        with_scaling: bool = True,
        quantile_range: tuple[float, float] = (25.0, 75.0),
        copy: bool = True,
        unit_variance: bool = False,
    ) -> None:
        self.with_centering = with_centering
        self.with_scaling = with_scaling
        self.quantile_range = quantile_range
        self.copy = copy
        self.unit_variance = unit_variance

    def _check_params(self) -> None:
        self._validate_params()
        qr = self.quantile_range
        if not (len(qr) == 2 and 0 <= qr[0] <= qr[1] <= 100):
            raise ValueError(
                f"Invalid quantile range: {qr!r} (expected (q_min, q_max) with "
                "0 <= q_min <= q_max <= 100, e.g. (25.0, 75.0))"
            )

    def _fit_rows(self, x: Tensor, device: torch.device | None) -> RobustScaler:
        q_lo, q_hi = (float(q) / 100.0 for q in self.quantile_range)
        with torch.no_grad():
            med, (lo, hi) = _nan_quantiles(x, [q_lo, q_hi])
            self.center_ = to_attr(med, device) if self.with_centering else None
            self.scale_ = to_attr(self._scale(lo, hi), device) if self.with_scaling else None
        return self

    def _scale(self, lo: Tensor, hi: Tensor) -> Tensor:
        """``scale_`` from the two quantiles: their range (1 where it is zero), divided by the
        standard normal's range of the same quantiles when ``unit_variance``."""
        scale = handle_zeros_in_scale(hi - lo)
        if self.unit_variance:
            nd = statistics.NormalDist()

            def ppf(p: float) -> float:
                return nd.inv_cdf(p) if 0 < p < 1 else (float("inf") if p else -float("inf"))

            q_lo, q_hi = (float(q) / 100.0 for q in self.quantile_range)
            scale = scale / (ppf(q_hi) - ppf(q_lo))
        return scale

    def fit(self, X: ArrayLike, y: Any = None) -> RobustScaler:
        """Compute the per-feature median and quantile range of ``X`` (exact). Sparse ``X``
        needs ``with_centering=False``; its quantiles count the implicit zeros."""
        self._check_params()
        if not is_sparse(X):
            batch = check_input(self, X, reset=True)
            return self._fit_rows(batch.x, batch.x.device if batch.is_tensor else None)
        if self.with_centering:
            raise ValueError(
                "Cannot center sparse matrices: use `with_centering=False` instead. See "
                "docstring for motivation and alternatives."
            )
        sb = check_sparse_input(self, X, reset=True)
        self.center_ = None
        self.scale_ = None
        if self.with_scaling:
            q_lo, q_hi = (float(q) / 100.0 for q in self.quantile_range)
            with torch.no_grad():
                lo, hi = sparse_quantiles(sb, [q_lo, q_hi])
                self.scale_ = to_attr(self._scale(lo, hi), sb.device if sb.is_tensor else None)
        return self

    def fit_distributed(self, X: ArrayLike, y: Any = None, *, group: Any = None) -> RobustScaler:
        """Exact fit on the union of every rank's ``X``: the rows are all-gathered (memory
        ``O(total rows × features)`` per rank), then every rank computes the same quantiles.
        Collective: call it on every rank of ``group``."""
        self._check_params()
        batch = check_input(self, X, reset=True)
        rows = torch.cat(all_gather_rows(batch.x, group))
        return self._fit_rows(rows, batch.x.device if batch.is_tensor else None)

    @blockwise
    def transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``(X − center_) / scale_``."""
        check_is_fitted(self)
        if is_sparse(X):
            if self.center_ is not None:  # scikit-learn would skip the centering silently
                raise ValueError(
                    "Cannot center sparse matrices: this RobustScaler was fitted with "
                    "with_centering=True; fit one with `with_centering=False` for sparse input."
                )
            sb = check_sparse_input(self, X, reset=False)
            return _sparse_scale(sb, self.copy, self.scale_, invert=True)
        batch = check_input(self, X, reset=False)
        y = _affine(batch, self.copy, (torch.sub, self.center_), (torch.div, self.scale_))
        return as_output(y, batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``X · scale_ + center_``."""
        check_is_fitted(self)
        if is_sparse(X):
            sb = check_sparse_input(self, X, reset=False, check_features=False)
            return _sparse_scale(sb, self.copy, self.scale_)
        batch = check_inverse_input(self, X)
        y = _affine(batch, self.copy, (torch.mul, self.scale_), (torch.add, self.center_))
        return as_output(y, batch)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = not self.with_centering
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


# ============================================================================ Normalizer

_NORM_CONSTRAINT = StrOptions({"l1", "l2", "max"})


def _normalize_tensor(x: Tensor, norm: str, axis: int, inplace: bool) -> tuple[Tensor, Tensor]:
    """``x`` divided by its ``norm`` along ``axis`` (in ``x``'s memory when ``inplace``), and
    the norms (1 where a vector's norm is below ``10·eps``)."""
    cd = accumulation_dtype(x.dtype)
    xc = x.to(cd)
    if norm == "l1":
        n = xc.abs().sum(axis, keepdim=True)
    elif norm == "l2":
        n = torch.linalg.vector_norm(xc, 2, dim=axis, keepdim=True)
    else:
        n = xc.abs().amax(axis, keepdim=True)
    n = handle_zeros_in_scale(n.to(x.dtype)).to(cd)
    if inplace:
        y = torch.div(xc, n, out=x) if xc is x else x.copy_(xc.div_(n))
    else:
        y = (xc / n).to(x.dtype)
    return y, n.squeeze(axis).to(x.dtype)


class _Normalize:
    """Stands for the ``normalize`` function where an estimator is expected (error messages)."""

    def __repr__(self) -> str:
        return "the normalize function"


def _divide_by_norms(sb: SparseBatch, norm: str, axis: int, *, inplace: bool) -> tuple[Any, Tensor]:
    """The sparse batch with every row (column for ``axis=0``) divided by its norm (all-zero
    vectors unchanged) in the caller's format, and the norms."""
    norms = sparse_vector_norms(sb, norm, axis)
    safe = torch.where(norms == 0, torch.ones((), dtype=norms.dtype, device=norms.device), norms)
    return sb.rebuild(sparse_apply(sb, torch.div, safe, inplace=inplace, axis=axis)), norms


def _normalize_sparse(x: Any, norm: str, axis: int, copy: bool, return_norm: bool) -> Any:
    """:func:`normalize` of sparse input: the stored values divided by their row's (column's for
    ``axis=0``) norm; all-zero vectors unchanged. scipy input comes back in CSR (CSC for
    ``axis=0``), as scikit-learn's does."""
    if axis not in (0, 1):
        raise ValueError(f"normalize: axis must be 0 or 1 for sparse input (got {axis})")
    sb = check_sparse_input(
        _Normalize(),
        x,
        reset=False,
        accept=("csr",) if axis == 1 else ("csc",),
        allow_nan=False,
        check_features=False,
    )
    out, norms = _divide_by_norms(sb, norm, axis, inplace=not copy)
    if return_norm:
        return out, norms if sb.is_tensor else norms.numpy()
    return out


def normalize(
    x: ArrayLike,
    norm: str = "l2",
    *,
    axis: int = 1,
    copy: bool = True,
    return_norm: bool = False,
) -> Any:
    """Scale vectors to unit norm along ``axis`` (scikit-learn's ``normalize``; numpy or torch).

    .. math:: y = x / \\lVert x \\rVert_p, \\qquad p \\in \\{1, 2, \\infty\\} \\text{ for }
        \\texttt{"l1"}, \\texttt{"l2"}, \\texttt{"max"}

    Vectors whose norm is below ``10·eps`` of the dtype are left unchanged (norm taken as 1),
    as in scikit-learn — no epsilon is added (``torch.nn.functional.normalize`` clamps instead).
    numpy input must be 2-D with ``axis`` 0 (columns) or 1 (rows) and finite, as scikit-learn
    requires; a tensor may have any shape and ``axis``, keeps its device and dtype, is not
    checked for NaN (they propagate) and is differentiable. ``copy=False`` writes the result
    into ``x`` where it can (a writable float array, a tensor outside autograd).
    ``return_norm=True`` also returns the norms (1 where the vector was zero).

    >>> normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    if isinstance(x, Tensor):
        validate_parameter_constraints(
            {"norm": [_NORM_CONSTRAINT], "copy": ["boolean"], "return_norm": ["boolean"]},
            {"norm": norm, "copy": copy, "return_norm": return_norm},
            caller_name="normalize",
        )
        if is_sparse(x):
            return _normalize_sparse(x, norm, axis, copy, return_norm)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        inplace = not copy and not x.requires_grad
        y, n = _normalize_tensor(x, norm, axis, inplace)
        return (y, n) if return_norm else y
    validate_parameter_constraints(
        {
            "norm": [_NORM_CONSTRAINT],
            "axis": [Options(Integral, {0, 1})],
            "copy": ["boolean"],
            "return_norm": ["boolean"],
        },
        {"norm": norm, "axis": axis, "copy": copy, "return_norm": return_norm},
        caller_name="normalize",
    )
    if is_sparse(x):
        return _normalize_sparse(x, norm, axis, copy, return_norm)
    arr = check_array(x, dtype=FLOAT_DTYPES, estimator="the normalize function")
    y, n = _normalize_tensor(from_numpy(arr), norm, axis, not copy and arr.flags.writeable)
    return (y.numpy(), n.numpy()) if return_norm else y.numpy()


class Normalizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale each sample (row) to unit norm (scikit-learn's ``Normalizer``; numpy or torch).

    .. math:: y_i = x_i / \\lVert x_i \\rVert_p

    Stateless: ``fit`` only checks the input and records ``n_features_in_``. Rows with zero
    norm are left unchanged. Input must be finite (scikit-learn's rule; tensors too). Sparse
    input stays sparse. See :func:`normalize` for the functional form on any axis.

    >>> Normalizer(norm="l1").transform(np.array([[1.0, 3.0]]))
    array([[0.25, 0.75]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "norm": [_NORM_CONSTRAINT],
        "copy": ["boolean"],
    }

    def __init__(self, norm: str = "l2", *, copy: bool = True) -> None:
        self.norm = norm
        self.copy = copy

    def fit(self, X: ArrayLike, y: Any = None) -> Normalizer:
        """Check ``X`` and the parameters; nothing is learned."""
        self._validate_params()
        if is_dask(X):
            check_dask_features(self, X, reset=True)
        elif is_sparse(X):
            check_sparse_input(self, X, reset=True, accept=("csr",), allow_nan=False)
        else:
            check_input(self, X, reset=True, allow_nan=False)
        return self

    @blockwise
    def transform(self, X: ArrayLike, copy: bool | None = None) -> np.ndarray | Tensor:
        """Each row divided by its ``norm`` (in ``X`` when ``copy=False`` and it may be written)."""
        self._validate_params()
        if is_sparse(X):
            sb = check_sparse_input(self, X, reset=False, accept=("csr",), allow_nan=False)
            inplace = not (self.copy if copy is None else copy)
            return _divide_by_norms(sb, self.norm, 1, inplace=inplace)[0]
        batch = check_input(self, X, reset=False, allow_nan=False)
        y, _ = _normalize_tensor(batch.x, self.norm, 1, _in_place(self, copy, batch))
        return as_output(y, batch)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
