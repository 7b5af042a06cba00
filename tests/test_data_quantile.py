"""QuantileTransformer against scikit-learn: fitted quantiles (subsampled with the same
random_state too), forward and inverse transforms with ties, NaN and out-of-range values,
uniform and normal outputs; tensors on their device; the estimator checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import preprocessing as skp
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import normkit.data as nd


def heavy(n=2000, seed=0, nan=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = np.c_[
        rng.lognormal(size=n) * (1.5 if seed else 1),
        np.round(rng.standard_normal(n) * 3 - 1),  # many ties
        rng.standard_t(2, size=n),  # heavy tails
    ]
    if nan:
        X[rng.random(X.shape) < 0.05] = np.nan
    return X.astype(dtype)


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize(
    "kw", [{}, {"n_quantiles": 37, "subsample": 500, "random_state": 4}], ids=["all", "sub"]
)
def test_quantile_transformer_matches_sklearn(dist, dtype, nan, kw):
    X = heavy(nan=nan, dtype=dtype)
    ours = nd.QuantileTransformer(output_distribution=dist, **kw).fit(X)
    theirs = skp.QuantileTransformer(output_distribution=dist, **kw).fit(X)
    assert ours.n_quantiles_ == theirs.n_quantiles_
    # numpy interpolates float32 data's percentiles in float32 (here: float64)
    qtol = 2e-7 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours.quantiles_, theirs.quantiles_, rtol=qtol, atol=qtol)
    np.testing.assert_array_equal(ours.references_, theirs.references_)
    Xt = heavy(n=300, seed=1, nan=nan, dtype=dtype)  # wider: values beyond the fitted range
    ys = theirs.transform(Xt)
    # (float32: scikit-learn's normal tail runs scipy's ppf in float32, here in float64)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    yo = ours.transform(Xt)
    assert yo.dtype == ys.dtype
    np.testing.assert_allclose(yo, ys, rtol=tol, atol=tol, equal_nan=True)
    # the inverse: float64 interpolation here (scikit-learn's normal CDF of float32 data runs in
    # float32), and steep segments of the heavy tail amplify rounding: looser bounds
    np.testing.assert_allclose(
        ours.inverse_transform(ys),
        theirs.inverse_transform(ys),
        rtol=max(tol, 1e-5 if dtype == np.float32 else 0),
        atol=max(tol * 10, 1e-9),
        equal_nan=True,
    )
    t = nd.QuantileTransformer(output_distribution=dist, **kw).fit(torch.from_numpy(X))
    assert isinstance(t.quantiles_, torch.Tensor)
    yt = t.transform(torch.from_numpy(Xt))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.from_numpy(Xt).dtype
    np.testing.assert_allclose(yt.numpy(), ys, rtol=tol, atol=tol, equal_nan=True)


def test_gradient_is_the_cdf_slope_inside_and_zero_outside():
    X = heavy()[:, :1]
    qt = nd.QuantileTransformer(n_quantiles=200).fit(X)
    x = torch.tensor([[1.0], [1e6]], dtype=torch.float64, requires_grad=True)
    qt.transform(x).sum().backward()
    eps = 1e-6
    num = (qt.transform(np.array([[1.0 + eps]])) - qt.transform(np.array([[1.0 - eps]]))) / (
        2 * eps
    )
    np.testing.assert_allclose(x.grad[0, 0].item(), num[0, 0], rtol=1e-6)
    assert x.grad[1, 0].item() == 0.0


def test_parameters_and_warnings_as_sklearn():
    X = heavy(n=50)
    with pytest.raises(
        InvalidParameterError, match="'n_quantiles' parameter of QuantileTransformer"
    ):
        nd.QuantileTransformer(n_quantiles=0).fit(X)
    with pytest.raises(ValueError, match="cannot be greater than the number of samples used"):
        nd.QuantileTransformer(n_quantiles=100, subsample=10).fit(X)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert nd.QuantileTransformer(n_quantiles=100).fit(X).n_quantiles_ == 50
    assert any("n_quantiles is set to n_samples" in str(m.message) for m in w)


@parametrize_with_checks([nd.QuantileTransformer(n_quantiles=10)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
