"""Input checks and the numpy ↔ torch bridge shared by every scaler.

All the math runs on torch tensors. A numpy input is validated by scikit-learn's own
``validate_data`` (so dtypes, ``n_features_in_``, ``feature_names_in_`` and the error messages are
scikit-learn's) and then viewed as a tensor without a copy; a tensor input is checked here with
the same rules and messages. The output goes back to the caller's type.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import FLOAT_DTYPES, check_array, validate_data
from torch import Tensor

from normkit._optional import installed

__all__ = [
    "ArrayLike",
    "Batch",
    "as_output",
    "check_finite",
    "check_input",
    "check_inverse_input",
    "check_sample_weight",
    "from_numpy",
    "numpy_view",
    "promoted",
    "reject_sparse",
    "serial_kernels",
    "serial_view",
    "to_attr",
    "to_tensor",
]

_F64 = torch.float64

ArrayLike = np.ndarray | Tensor | Any
"""numpy array (or anything :func:`numpy.asarray` accepts) or a :class:`torch.Tensor`."""


@dataclass(frozen=True)
class Batch:
    """A validated 2-D floating input as a tensor, and whether the caller gave a tensor.

    ``finite`` is True when the data holds no NaN (and, after validation, no inf): the fast
    paths skip the NaN masks then; None when the check was deferred to a kernel that folds it
    into its own pass (``check_input(..., defer_finite=True)``). ``writable`` is True when ``x`` may be written in place for a
    ``copy=False`` transform: a numpy array that numpy lets us write, or a tensor outside
    autograd.
    """

    x: Tensor
    is_tensor: bool
    finite: bool | None
    writable: bool = False

    @property
    def n_samples(self) -> int:
        return self.x.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device


def reject_sparse(X: Any, who: str) -> None:
    """Raise a TypeError naming the fix for scipy.sparse or torch sparse input where only dense
    input is taken."""
    sparse = hasattr(X, "tocsr") and hasattr(X, "nnz")
    if isinstance(X, Tensor) and X.layout != torch.strided:
        sparse = True
    if sparse:
        raise TypeError(
            f"{who} takes dense input here (got sparse {type(X).__name__}). Densify it "
            "(X.toarray() / X.to_dense()) if it fits in memory, or use "
            "normkit.data.MaxAbsScaler, StandardScaler(with_mean=False), "
            "RobustScaler(with_centering=False) or Normalizer, which keep sparsity."
        )


def from_numpy(X: np.ndarray) -> Tensor:
    """A tensor sharing ``X``'s memory (read-only inputs are never written to)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


@functools.cache
def serial_kernels() -> Any:
    """:mod:`normkit.data._kernels` (single-threaded Numba kernels), or None without numba."""
    if not installed("numba"):
        return None
    from normkit.data import _kernels

    return _kernels


#: Smallest batch (elements) for the single-threaded kernels: below it torch's own CPU ops run
#: on one thread anyway (torch's parallel grain size) and a kernel's fixed costs do not pay.
SERIAL_MIN_NUMEL = 1 << 15


def serial_view(x: Tensor) -> np.ndarray | None:
    """:func:`numpy_view` of a batch of at least :data:`SERIAL_MIN_NUMEL` elements when the
    Numba kernels are installed; else None."""
    if x.numel() < SERIAL_MIN_NUMEL or serial_kernels() is None:
        return None
    return numpy_view(x)


def numpy_view(x: Tensor) -> np.ndarray | None:
    """``x`` as a numpy array sharing its memory when a single-threaded CPU path can take it:
    a 2-D C-contiguous float32/float64 CPU tensor outside autograd; else None."""
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or x.requires_grad
        or x.ndim != 2
        or not x.is_contiguous()
    ):
        return None
    return x.detach().numpy()


def _all_finite(x: Tensor) -> bool:
    """True when ``x`` has no NaN/inf: one sum (inf/NaN poison it); exact check only if not.

    On the CPU the sum is single-threaded (the Numba kernel, else numpy): a torch reduction
    would use torch's thread pool, which loses on a small shared machine.
    """
    arr = numpy_view(x)
    if arr is not None:
        k = serial_kernels() if x.numel() >= SERIAL_MIN_NUMEL else None
        total = k.column_sums(arr) if k is not None else arr.sum()
        if np.isfinite(total):
            return True
        return bool(np.isfinite(arr).all())
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(x.sum(dtype=acc))):
        return True
    return bool(torch.isfinite(x).all())


def _check_tensor(
    est: Any, x: Tensor, *, reset: bool, allow_nan: bool, check_features: bool, defer: bool
) -> Batch:
    who = type(est).__name__
    if x.ndim != 2:
        raise ValueError(
            f"Expected a 2D tensor of shape (n_samples, n_features), got a {x.ndim}D tensor of "
            f"shape {tuple(x.shape)}. Reshape your data with x.reshape(-1, 1) if it has a single "
            "feature or x.reshape(1, -1) if it contains a single sample."
        )
    if x.is_complex():
        raise ValueError(f"{who} does not support complex data (got dtype {x.dtype})")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.shape[0] < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={tuple(x.shape)}) while a minimum of 1 is "
            f"required by {who}."
        )
    if x.shape[1] < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={tuple(x.shape)}) while a minimum of 1 is "
            f"required by {who}."
        )
    if check_features:
        validate_data(est, x, reset=reset, skip_check_array=True)
    # in place only outside autograd, and not on an inference tensor outside inference mode
    inference = torch.is_inference(x) and not torch.is_inference_mode_enabled()
    writable = not (x.requires_grad or inference)
    return Batch(x, True, None if defer else check_finite(x, who, allow_nan), writable)


def check_finite(x: Tensor, who: str, allow_nan: bool) -> bool:
    """Raise on inf (and on NaN unless ``allow_nan``); return True when ``x`` has no NaN.

    One multi-threaded torch sum decides the common all-finite case (scikit-learn's own check
    is a single-threaded numpy pass, the largest cost of a transform of a numpy chunk). For a
    CUDA tensor this is one host synchronization per call.
    """
    with torch.no_grad():
        if _all_finite(x):
            return True
        has_inf = bool(torch.isinf(x).any())
    if has_inf:
        raise ValueError(
            f"Input X contains infinity (dtype {x.dtype}); {who} accepts finite values"
            + (" and NaN (ignored in fit, kept in transform)" if allow_nan else "")
        )
    if not allow_nan:
        raise ValueError(
            f"Input X contains NaN; {who} needs finite values. Impute them first, e.g. "
            "sklearn.impute.SimpleImputer or torch.nan_to_num."
        )
    return False


def check_input(
    est: Any,
    X: ArrayLike,
    *,
    reset: bool,
    allow_nan: bool = True,
    check_features: bool = True,
    defer_finite: bool = False,
) -> Batch:
    """Validate ``X`` for ``est`` as scikit-learn does and return it as a :class:`Batch`.

    ``reset=True`` (first fit) records ``n_features_in_``/``feature_names_in_``; otherwise they
    are checked. Integer/bool input becomes float (float64 for numpy as scikit-learn does, the
    default torch dtype for tensors); float32/float64 are kept, and for tensors also
    float16/bfloat16, on their device. ``defer_finite=True`` leaves the NaN/inf check to the
    caller (``Batch.finite`` is None): for kernels that fold it into their own pass, which
    must then call :func:`check_finite` when they meet a non-finite value.
    """
    reject_sparse(X, type(est).__name__)
    if type(X).__module__.split(".")[0] == "dask":
        raise TypeError(
            f"{type(est).__name__} cannot take a dask collection here: this step needs the "
            "whole of each column in memory (exact quantiles, or a fit without a streaming "
            "merge). Fit on a sample that fits in memory (e.g. X[::k].compute()), then "
            "transform the dask array: transform is lazy and block by block."
        )
    if isinstance(X, Tensor):
        return _check_tensor(
            est,
            X,
            reset=reset,
            allow_nan=allow_nan,
            check_features=check_features,
            defer=defer_finite,
        )
    # finiteness is checked below, on the tensor (see _check_finite)
    kwargs: dict[str, Any] = {"dtype": FLOAT_DTYPES, "ensure_all_finite": False}
    X = validate_data(est, X, reset=reset, **kwargs) if check_features else check_array(X, **kwargs)
    x = from_numpy(X)
    finite = None if defer_finite else check_finite(x, type(est).__name__, allow_nan)
    return Batch(x, False, finite, X.flags.writeable)


def check_sample_weight(sample_weight: Any, batch: Any) -> Tensor | None:
    """``sample_weight`` as a float64 ``(n_samples,)`` tensor on the batch's device.

    None stays None; a scalar is repeated for every sample. As scikit-learn does, the weights of
    a numpy batch are first rounded to the batch's dtype; a tensor's weights are kept as given.
    Weights must be finite; scikit-learn's messages for the wrong shape.
    """
    if sample_weight is None:
        return None
    n = batch.n_samples
    if isinstance(sample_weight, Tensor):
        w = sample_weight.detach().to(device=batch.device, dtype=_F64)
    else:
        w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64), device=batch.device)
        if not batch.is_tensor:
            w = w.to(batch.dtype).to(_F64)
    if w.ndim == 0:
        w = w.expand(n).clone()
    if w.ndim != 1:
        raise ValueError(
            f"Sample weights must be 1D array or scalar, got {w.ndim}D array. Expected either "
            f"a scalar value or a 1D array of length {n}."
        )
    if w.shape[0] != n:
        raise ValueError(f"sample_weight.shape == {tuple(w.shape)}, expected ({n},)!")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("Input sample_weight contains NaN or infinity; weights must be finite")
    if not bool((w != 0).any()):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


def check_inverse_input(est: Any, X: ArrayLike, *, defer_finite: bool = False) -> Batch:
    """Validate the input of ``inverse_transform``: like :func:`check_input` without the
    feature-name check (scaled data has no names), but with the feature-count check."""
    batch = check_input(
        est, X, reset=False, allow_nan=True, check_features=False, defer_finite=defer_finite
    )
    n = getattr(est, "n_features_in_", None)
    if n is not None and batch.x.shape[1] != n:
        raise ValueError(
            f"X has {batch.x.shape[1]} features, but {type(est).__name__} is expecting {n} "
            "features as input."
        )
    return batch


def as_output(y: Tensor, batch: Batch) -> np.ndarray | Tensor:
    """``y`` in the caller's type: the tensor itself, or a numpy array (no copy)."""
    return y if batch.is_tensor else y.numpy()


def to_tensor(a: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A fitted attribute (numpy array, tensor or scalar) as a tensor on ``device``."""
    return torch.as_tensor(a, device=device, dtype=dtype)


def to_attr(t: Tensor, device: torch.device | None) -> np.ndarray | Tensor:
    """A statistic in the type of the scaler's fitted attributes: numpy when the scaler was
    first fitted on numpy (``device is None``), else a tensor on ``device``."""
    t = t.detach()
    return t.cpu().numpy() if device is None else t.to(device)


def promoted(x: Tensor, op: Any, value: Tensor, *, inplace: bool = False) -> Tensor:
    """``op(x, value)`` computed in the promoted dtype and rounded back to ``x.dtype``.

    This is numpy's in-place ``X op= value`` (what scikit-learn's transforms do), so a float32
    input with float64 statistics is computed in float64 and rounded once, as scikit-learn does.
    ``inplace=True`` writes the result into ``x`` (``copy=False``) and returns it.
    """
    wide = torch.promote_types(x.dtype, value.dtype)
    value = value.to(device=x.device, dtype=wide)
    if inplace:
        return op(x, value, out=x)
    return op(x.to(wide), value).to(x.dtype)
