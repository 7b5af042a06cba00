"""``QuantileTransformer``: each feature mapped through its empirical CDF to a uniform or a
normal distribution (scikit-learn's, on numpy arrays and torch tensors)."""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state, resample
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from normkit.data._arrays import (
    ArrayLike,
    as_output,
    check_input,
    check_inverse_input,
    reject_sparse,
    to_attr,
    to_tensor,
)
from normkit.data._dask import blockwise
from normkit.data._quantiles import interpolated_quantiles

__all__ = ["QuantileTransformer"]

_F64 = torch.float64
#: scikit-learn's margin at the ends of the CDF (values within it map to the bounds).
BOUNDS_THRESHOLD = 1e-7


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """``numpy.interp`` of every row of ``x`` (F, n) on its own increasing ``xp`` (F, Q) with
    values ``fp`` (F, Q): clamped to ``fp``'s ends outside ``xp``; ``xp[j] ≤ x < xp[j+1]``
    picks segment ``j`` (the last of equal knots), where ``slope·(x − xp[j]) + fp[j]``."""
    q = xp.shape[1]
    j = (torch.searchsorted(xp, x, right=True) - 1).clamp(0, max(q - 2, 0))
    x0, x1 = xp.gather(1, j), xp.gather(1, (j + 1).clamp_max(q - 1))
    y0, y1 = fp.gather(1, j), fp.gather(1, (j + 1).clamp_max(q - 1))
    res = (y1 - y0) / (x1 - x0) * (x - x0) + y0
    res = torch.where(torch.isfinite(res), res, y0)  # a zero-width segment takes its left value
    res = torch.where(x >= xp[:, -1:], fp[:, -1:], res)
    return torch.where(x < xp[:, :1], fp[:, :1], res)


class QuantileTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Map each feature to a uniform or a standard normal distribution through its quantiles
    (scikit-learn's ``QuantileTransformer``, on numpy arrays and torch tensors).

    .. math:: y = G^{-1}(\\hat F(x)), \\qquad \\hat F \\text{ the feature's empirical CDF, }
        G \\text{ uniform on [0, 1] or } \\mathcal N(0, 1)

    ``fit`` takes ``n_quantiles`` quantiles of each feature (numpy's ``linear`` method, NaNs
    ignored) on at most ``subsample`` rows drawn with ``random_state`` exactly as scikit-learn
    draws them, so the fitted ``quantiles_`` are scikit-learn's. ``transform`` interpolates
    the CDF both ways (scikit-learn's average of the forward and backward interpolation, which
    splits ties evenly) and clips the normal output at ``Φ⁻¹(1e-7)``; values outside the
    fitted range go to the bounds, NaN stays NaN. Robust to outliers by construction: a rank
    transform. Transforms run in torch (a tensor stays on its device and dtype); they are
    piecewise linear in ``x``, so gradients flow (zero outside the fitted range).

    Dense input only (scikit-learn also takes sparse CSC).

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted: ``n_quantiles_``, ``quantiles_``
    ``(n_quantiles_, n_features)`` and ``references_`` ``(n_quantiles_,)`` (float64; tensors
    after a tensor fit).

    >>> qt = QuantileTransformer(n_quantiles=100).fit(np.random.default_rng(0).lognormal(size=(500, 1)))
    >>> qt.transform(np.array([[1.0]])).round(1)
    array([[0.5]])
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_quantiles": [Interval(Integral, 1, None, closed="left")],
        "output_distribution": [StrOptions({"uniform", "normal"})],
        "ignore_implicit_zeros": ["boolean"],
        "subsample": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "copy": ["boolean"],
    }

    def __init__(
        self,
        *,
        n_quantiles: int = 1000,
        output_distribution: str = "uniform",
        ignore_implicit_zeros: bool = False,
        subsample: int | None = 10_000,
        random_state: Any = None,
        copy: bool = True,
    ) -> None:
        self.n_quantiles = n_quantiles
        self.output_distribution = output_distribution
        self.ignore_implicit_zeros = ignore_implicit_zeros
        self.subsample = subsample
        self.random_state = random_state
        self.copy = copy

    def fit(self, X: ArrayLike, y: Any = None) -> QuantileTransformer:
        """Compute the quantiles of every feature (on a subsample of ``subsample`` rows)."""
        self._validate_params()
        if self.subsample is not None and self.n_quantiles > self.subsample:
            raise ValueError(
                "The number of quantiles cannot be greater than the number of samples used. "
                f"Got {self.n_quantiles} quantiles and {self.subsample} samples."
            )
        reject_sparse(X, type(self).__name__)
        batch = check_input(self, X, reset=True)
        x = batch.x.detach()
        n_samples = x.shape[0]
        if self.n_quantiles > n_samples:
            warnings.warn(
                f"n_quantiles ({self.n_quantiles}) is greater than the total number of samples "
                f"({n_samples}). n_quantiles is set to n_samples.",
                stacklevel=2,
            )
        if self.ignore_implicit_zeros:
            warnings.warn(
                "'ignore_implicit_zeros' takes effect only with sparse matrix. This parameter "
                "has no effect.",
                stacklevel=2,
            )
        self.n_quantiles_ = max(1, min(self.n_quantiles, n_samples))
        references = np.linspace(0, 1, self.n_quantiles_, endpoint=True)
        if self.subsample is not None and self.subsample < n_samples:
            # scikit-learn's draw: the same rows for the same random_state
            rng = check_random_state(self.random_state)
            rows = resample(
                np.arange(n_samples), replace=False, n_samples=self.subsample, random_state=rng
            )
            x = x[torch.as_tensor(rows, device=x.device)]
        with torch.no_grad():
            xs = x.sort(dim=0).values
            f = xs.shape[1]
            n = (~torch.isnan(x)).sum(0).to(_F64)
            # numpy's percentile: q = (references · 100) / 100, with its rounding
            q = torch.from_numpy(references * 100 / 100).to(x.device)[:, None]
            _, (quantiles,) = interpolated_quantiles(
                lambda k: xs.gather(0, k.reshape(-1, f)).reshape(k.shape), n, x.dtype, [q]
            )
        device = x.device if batch.is_tensor else None
        self.quantiles_ = to_attr(quantiles, device)
        self.references_ = to_attr(torch.from_numpy(references), device)
        return self

    def _transform(self, x: Tensor, *, inverse: bool) -> Tensor:
        quantiles = to_tensor(self.quantiles_, x.device, _F64).T.contiguous()  # (F, Q)
        refs = to_tensor(self.references_, x.device, _F64).expand_as(quantiles).contiguous()
        xc = x.to(_F64).T.contiguous()  # (F, n)
        normal = self.output_distribution == "normal"
        lo_x: float | Tensor
        hi_x: float | Tensor
        lo_y: float | Tensor
        hi_y: float | Tensor
        if inverse:
            lo_x, hi_x, lo_y, hi_y = 0.0, 1.0, quantiles[:, :1], quantiles[:, -1:]
            if normal:
                xc = torch.special.ndtr(xc)
        else:
            lo_x, hi_x, lo_y, hi_y = quantiles[:, :1], quantiles[:, -1:], 0.0, 1.0
        if normal:
            at_lo, at_hi = xc - BOUNDS_THRESHOLD < lo_x, xc + BOUNDS_THRESHOLD > hi_x
        else:
            at_lo, at_hi = xc == lo_x, xc == hi_x
        if inverse:
            y = _interp(xc, refs, quantiles)
        else:
            y = 0.5 * (
                _interp(xc, quantiles, refs) - _interp(-xc, -quantiles.flip(1), -refs.flip(1))
            )
        y = torch.where(at_hi, hi_y, y)
        y = torch.where(at_lo, lo_y, y)
        if normal and not inverse:
            eps = float(np.spacing(1))
            lo = float(torch.special.ndtri(torch.tensor(BOUNDS_THRESHOLD - eps, dtype=_F64)))
            hi = float(torch.special.ndtri(torch.tensor(1 - (BOUNDS_THRESHOLD - eps), dtype=_F64)))
            y = torch.special.ndtri(y).clamp(lo, hi)
        y = torch.where(torch.isnan(xc), xc, y)
        return y.T.to(x.dtype)

    @blockwise
    def transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """Each feature through its fitted CDF to ``output_distribution``."""
        check_is_fitted(self)
        reject_sparse(X, type(self).__name__)
        batch = check_input(self, X, reset=False)
        return as_output(self._transform(batch.x, inverse=False), batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """Back to the original units through the fitted quantiles."""
        check_is_fitted(self)
        reject_sparse(X, type(self).__name__)
        batch = check_inverse_input(self, X)
        return as_output(self._transform(batch.x, inverse=True), batch)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
