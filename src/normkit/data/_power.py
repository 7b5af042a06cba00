"""``PowerTransformer``: Yeo-Johnson and Box-Cox, fitted as scikit-learn fits them (scipy's
maximum-likelihood λ per feature), applied in torch on any device, differentiably."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from normkit.data._arrays import (
    ArrayLike,
    Batch,
    as_output,
    check_input,
    check_inverse_input,
    to_attr,
    to_tensor,
)
from normkit.data._dask import blockwise
from normkit.data._scalers import StandardScaler
from normkit.nn.normalization import constant_features

__all__ = ["PowerTransformer", "box_cox", "yeo_johnson"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for 16-bit inputs, else the input's dtype (scipy computes in the data's)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def yeo_johnson(x: Tensor, lmbda: Tensor, *, inverse: bool = False) -> Tensor:
    """The Yeo-Johnson transform of every column of ``x`` with its own ``lmbda`` (or its inverse).

    .. math::
        \\psi(x, \\lambda) = \\begin{cases}
        ((x+1)^{\\lambda} - 1)/\\lambda & x \\ge 0, \\lambda \\ne 0 \\\\
        \\log(x+1) & x \\ge 0, \\lambda = 0 \\\\
        -((1-x)^{2-\\lambda} - 1)/(2-\\lambda) & x < 0, \\lambda \\ne 2 \\\\
        -\\log(1-x) & x < 0, \\lambda = 2
        \\end{cases}

    computed as scipy does (``expm1``/``log1p``; λ within ``eps`` of 0 or 2 takes the log
    branch). Yeo & Johnson, "A new family of power transformations to improve normality or
    symmetry", Biometrika 2000. Differentiable; NaN stays NaN.

    >>> yeo_johnson(torch.tensor([[0.0, -1.0]]), torch.tensor([0.5, 0.5]))
    tensor([[ 0.0000, -1.2190]])
    """
    cd = _compute_dtype(x)
    x, lam = x.to(cd), lmbda.to(device=x.device, dtype=cd)
    eps = torch.finfo(cd).eps
    one = torch.ones((), dtype=cd, device=x.device)
    at0, at2 = lam.abs() < eps, (lam - 2).abs() <= eps
    l0 = torch.where(at0, one, lam)  # safe divisors: the branch not taken stays finite
    l2 = torch.where(at2, one, 2 - lam)
    pos = x >= 0
    zero = torch.zeros((), dtype=cd, device=x.device)
    xp, xn = torch.where(pos, x, zero), torch.where(pos, zero, x)
    if inverse:
        p = torch.where(at0, torch.expm1(xp), torch.expm1(torch.log1p(xp * l0) / l0))
        n = torch.where(at2, -torch.expm1(-xn), -torch.expm1(torch.log1p(-l2 * xn) / l2))
    else:
        p = torch.where(at0, torch.log1p(xp), torch.expm1(l0 * torch.log1p(xp)) / l0)
        n = torch.where(at2, -torch.log1p(-xn), -torch.expm1(l2 * torch.log1p(-xn)) / l2)
    return torch.where(pos, p, n)


def box_cox(x: Tensor, lmbda: Tensor, *, inverse: bool = False) -> Tensor:
    """The Box-Cox transform of every column of strictly positive ``x`` (or its inverse).

    .. math:: y = (x^{\\lambda} - 1)/\\lambda \\;(\\lambda \\ne 0), \\qquad y = \\log x \\;(\\lambda = 0)

    as ``scipy.special.boxcox``/``inv_boxcox`` compute it. Box & Cox, "An analysis of
    transformations", JRSS B 1964. Differentiable.

    >>> box_cox(torch.tensor([[1.0, 4.0]]), torch.tensor([0.0, 0.5]))
    tensor([[0., 2.]])
    """
    cd = _compute_dtype(x)
    x, lam = x.to(cd), lmbda.to(device=x.device, dtype=cd)
    at0 = lam == 0
    safe = torch.where(at0, torch.ones((), dtype=cd, device=x.device), lam)
    if inverse:
        return torch.where(at0, torch.exp(x), torch.exp(torch.log1p(safe * x) / safe))
    return torch.where(at0, torch.log(x), torch.expm1(safe * torch.log(x)) / safe)


class PowerTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Make each feature more Gaussian-like with a power transform, then (by default)
    standardize it (scikit-learn's ``PowerTransformer``, on numpy arrays and torch tensors).

    .. math:: z = \\frac{\\psi(x, \\lambda) - \\mu}{\\sigma}

    ``ψ`` is :func:`yeo_johnson` (any real data) or :func:`box_cox` (strictly positive data).
    ``fit`` finds each feature's ``λ`` by maximum likelihood exactly as scikit-learn does (scipy's
    ``yeojohnson``/``boxcox`` optimizers on the column, NaNs ignored; a constant feature keeps
    ``λ = 1`` under Yeo-Johnson), then fits a :class:`StandardScaler` on the transformed data
    when ``standardize``. :meth:`transform` and :meth:`inverse_transform` run in torch: a tensor
    stays on its device and dtype (16-bit computed in float32) and gradients flow through.

    Use it for heavy-tailed or skewed features, where a z-score leaves the outliers in charge.

    Shapes: ``X`` is ``(n_samples, n_features)``. Fitted: ``lambdas_`` (the data's dtype, numpy
    after a numpy fit, a tensor after a tensor fit), ``n_features_in_``.

    >>> pt = PowerTransformer().fit(np.random.default_rng(0).lognormal(size=(500, 2)))
    >>> pt.lambdas_.shape
    (2,)
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "method": [StrOptions({"yeo-johnson", "box-cox"})],
        "standardize": ["boolean"],
        "copy": ["boolean"],
    }

    def __init__(
        self, method: str = "yeo-johnson", *, standardize: bool = True, copy: bool = True
    ) -> None:
        self.method = method
        self.standardize = standardize
        self.copy = copy

    def _psi(self, x: Tensor, *, inverse: bool = False) -> Tensor:
        lam = to_tensor(self.lambdas_, x.device)
        f = box_cox if self.method == "box-cox" else yeo_johnson
        return f(x, lam, inverse=inverse).to(x.dtype)

    def _check_positive(self, batch: Batch) -> None:
        if self.method != "box-cox":
            return
        x = batch.x
        lowest = torch.where(torch.isnan(x), torch.full((), float("inf"), dtype=x.dtype), x)
        if bool((lowest <= 0).any()):
            raise ValueError(
                "The Box-Cox transformation can only be applied to strictly positive data "
                f"(got a minimum of {float(lowest.min())}); use method='yeo-johnson', which "
                "takes any real values"
            )

    def fit(self, X: ArrayLike, y: Any = None) -> PowerTransformer:
        """Find each feature's λ by maximum likelihood (and the standardization statistics)."""
        self._validate_params()
        batch = check_input(self, X, reset=True)
        self._check_positive(batch)
        x = batch.x.detach()
        cols = (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
        # scikit-learn's constant-feature rule on the plain mean and variance (NaN: not constant)
        t = torch.from_numpy
        const = constant_features(
            t(np.var(cols, axis=0, dtype=np.float64)),
            t(np.mean(cols, axis=0, dtype=np.float64)),
            torch.tensor(float(cols.shape[0]), dtype=torch.float64),
        )
        lambdas = np.empty(cols.shape[1], dtype=cols.dtype)
        with np.errstate(invalid="ignore"):
            for i in range(cols.shape[1]):
                col = cols[:, i][~np.isnan(cols[:, i])]
                if col.size == 0:
                    raise ValueError(f"Column {i} must not be all nan.")
                if self.method == "yeo-johnson" and bool(const[i]):
                    lambdas[i] = 1.0
                elif self.method == "yeo-johnson":
                    lambdas[i] = stats.yeojohnson(col, lmbda=None)[1]
                else:
                    lambdas[i] = stats.boxcox(col, lmbda=None)[1]
        device = x.device if batch.is_tensor else None
        self.lambdas_ = to_attr(torch.from_numpy(lambdas), device)
        if self.standardize:
            with torch.no_grad():
                self._scaler = StandardScaler().fit(self._psi(x))
        return self

    @blockwise
    def transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """``ψ(X, λ)``, standardized when ``standardize``."""
        check_is_fitted(self)
        batch = check_input(self, X, reset=False)
        self._check_positive(batch)
        y = self._psi(batch.x)
        if self.standardize:
            y = self._scaler.transform(y)
        return as_output(y, batch)

    @blockwise
    def inverse_transform(self, X: ArrayLike) -> np.ndarray | Tensor:
        """Back to the original units: un-standardize, then ``ψ⁻¹(·, λ)``."""
        check_is_fitted(self)
        batch = check_inverse_input(self, X)
        y = batch.x
        if self.standardize:
            y = self._scaler.inverse_transform(y)
        return as_output(self._psi(y, inverse=True), batch)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
