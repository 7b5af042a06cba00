"""PowerTransformer and the Yeo-Johnson / Box-Cox functions against scikit-learn and scipy
(fitted λ, transforms, inverses, NaN, dtypes), tensors on their device, float64 gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats
from sklearn import preprocessing as skp
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

import normkit.data as nd
from normkit.data._power import box_cox, yeo_johnson


def skewed(n=300, seed=0, positive=False, nan=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = np.c_[
        rng.lognormal(size=n),
        rng.standard_normal(n) * 3 - 1,
        rng.exponential(size=n) * 5,
        -rng.lognormal(size=n) * 2,
    ]
    if positive:
        X = np.abs(X) + 0.1
    else:
        X[:, 1] = np.where(np.arange(n) % 50 == 0, X[:, 1], X[:, 1])
        X = np.c_[X, np.full(n, 2.0)]  # a constant feature keeps λ = 1
    if nan:
        X[rng.random(X.shape) < 0.1] = np.nan
    return X.astype(dtype)


@pytest.mark.parametrize("method", ["yeo-johnson", "box-cox"])
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nan", [False, True])
def test_power_transformer_matches_sklearn(method, standardize, dtype, nan):
    X = skewed(positive=method == "box-cox", nan=nan, dtype=dtype)
    ours = nd.PowerTransformer(method, standardize=standardize).fit(X)
    theirs = skp.PowerTransformer(method=method, standardize=standardize).fit(X)
    assert ours.lambdas_.dtype == theirs.lambdas_.dtype
    np.testing.assert_array_equal(ours.lambdas_, theirs.lambdas_)  # the same scipy fit
    tol = 2e-5 if dtype == np.float32 else 1e-12
    Xt = skewed(n=50, seed=1, positive=method == "box-cox", nan=nan, dtype=dtype)
    ys = theirs.transform(Xt)
    yo = ours.transform(Xt)
    assert yo.dtype == ys.dtype
    np.testing.assert_allclose(yo, ys, rtol=tol, atol=tol, equal_nan=True)
    # (1e-8: the constant feature's exact mean here vs scikit-learn's rounded one, through ψ⁻¹)
    np.testing.assert_allclose(
        ours.inverse_transform(ys),
        theirs.inverse_transform(ys),
        rtol=max(tol * 10, 1e-8),
        atol=max(tol * 10, 1e-8),
        equal_nan=True,
    )
    # tensors: fitted λ as a tensor, the same numbers
    t = nd.PowerTransformer(method, standardize=standardize).fit(torch.from_numpy(X))
    assert isinstance(t.lambdas_, torch.Tensor)
    yt = t.transform(torch.from_numpy(Xt))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.from_numpy(Xt).dtype
    np.testing.assert_allclose(yt.numpy(), ys, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("lam", [-1.5, 0.0, 0.7, 2.0, 3.1])
def test_functions_against_scipy(lam):
    x = np.linspace(-5, 5, 101)
    lmbda = torch.tensor([lam], dtype=torch.float64)
    got = yeo_johnson(torch.from_numpy(x)[:, None], lmbda)[:, 0].numpy()
    np.testing.assert_allclose(got, stats.yeojohnson(x, lam), rtol=1e-13, atol=1e-13)
    back = yeo_johnson(torch.from_numpy(got)[:, None], lmbda, inverse=True)[:, 0].numpy()
    np.testing.assert_allclose(back, x, rtol=1e-10, atol=1e-10)
    xp = np.linspace(0.05, 9, 101)
    got = box_cox(torch.from_numpy(xp)[:, None], lmbda)[:, 0].numpy()
    np.testing.assert_allclose(got, special.boxcox(xp, lam), rtol=1e-13, atol=1e-13)
    back = box_cox(torch.from_numpy(got)[:, None], lmbda, inverse=True)[:, 0].numpy()
    np.testing.assert_allclose(back, special.inv_boxcox(got, lam), rtol=1e-12)


def test_gradcheck_float64():
    lam = torch.tensor([-0.5, 0.0, 1.3, 2.0], dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: yeo_johnson(v, lam), (x,))
    assert torch.autograd.gradcheck(lambda v: yeo_johnson(v, lam, inverse=True), (x * 0.3,))
    xp = (torch.rand(6, 4, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: box_cox(v, lam), (xp,))
    pt = nd.PowerTransformer().fit(skewed()[:, :4])
    xt = torch.from_numpy(skewed(n=8, seed=3)[:, :4]).requires_grad_()
    assert torch.autograd.gradcheck(pt.transform, (xt,))


def test_box_cox_refuses_non_positive_data_and_bad_parameters():
    X = skewed()
    with pytest.raises(ValueError, match="strictly positive"):
        nd.PowerTransformer("box-cox").fit(X)
    with pytest.raises(ValueError, match="strictly positive"):
        nd.PowerTransformer("box-cox").fit(skewed(positive=True)).transform(-np.abs(X[:, :4]))
    with pytest.raises(InvalidParameterError, match="'method' parameter of PowerTransformer"):
        nd.PowerTransformer("log").fit(X)


@parametrize_with_checks([nd.PowerTransformer(), nd.PowerTransformer(standardize=False)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
