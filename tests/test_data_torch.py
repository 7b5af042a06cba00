"""The torch path of normkit.data and the ``normkit.nn.Normalization`` layer: tensor in/out
(dtype, device), float64 gradcheck through transform / inverse / normalize / the layer,
adapt over batches, from_scaler (scikit-learn's fitted scalers as the oracle), state_dict, and
``TargetScaler`` in a training loop (oracle: scikit-learn's least squares)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import preprocessing as skp
from sklearn.datasets import load_diabetes, load_wine
from sklearn.linear_model import LinearRegression
from torch import nn

import normkit.data as nd
from normkit.nn import Normalization

SCALERS = [
    nd.StandardScaler,
    nd.MinMaxScaler,
    nd.MaxAbsScaler,
    nd.RobustScaler,
    lambda: nd.MinMaxScaler(feature_range=(-1, 2)),
    lambda: nd.StandardScaler(with_mean=False),
]
SK_TWINS = [
    skp.StandardScaler,
    skp.MinMaxScaler,
    skp.MaxAbsScaler,
    skp.RobustScaler,
    lambda: skp.MinMaxScaler(feature_range=(-1, 2)),
    lambda: skp.StandardScaler(with_mean=False),
]


def wine() -> np.ndarray:
    return load_wine().data  # 178 x 13, features on very different scales


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("make", SCALERS[:4])
def test_tensor_in_tensor_out_same_dtype(make, dtype):
    X = wine()
    sc = make().fit(torch.from_numpy(X))
    assert isinstance(sc.scale_, torch.Tensor)  # fitted on tensors: tensor attributes
    x = torch.from_numpy(X).to(dtype)
    y = sc.transform(x)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device == x.device
    # oracle: scikit-learn on the same (rounded) values in float64
    sk = {
        "StandardScaler": skp.StandardScaler,
        "MinMaxScaler": skp.MinMaxScaler,
        "MaxAbsScaler": skp.MaxAbsScaler,
        "RobustScaler": skp.RobustScaler,
    }[type(sc).__name__]().fit(X)
    want = sk.transform(x.double().numpy())
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12}
    np.testing.assert_allclose(y.double().numpy(), want, rtol=tol[dtype], atol=tol[dtype])
    back = sc.inverse_transform(y)
    assert back.dtype == dtype
    np.testing.assert_allclose(
        back.double().numpy(), sk.inverse_transform(y.double().numpy()), rtol=tol[dtype] * 4
    )


def test_numpy_fit_then_tensor_transform_and_back():
    X = wine()
    sc = nd.StandardScaler().fit(X)
    assert isinstance(sc.mean_, np.ndarray) and sc.mean_.dtype == np.float64
    y = sc.transform(torch.from_numpy(X).float())
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), skp.StandardScaler().fit_transform(X), atol=1e-5)


@pytest.mark.parametrize("i", range(len(SCALERS)))
def test_gradcheck_transform_and_inverse(i):
    X = torch.from_numpy(wine()[:20, :4])
    sc = SCALERS[i]().fit(X)
    x = X[:5].clone().requires_grad_()
    assert torch.autograd.gradcheck(sc.transform, (x,))
    assert torch.autograd.gradcheck(sc.inverse_transform, (x,))
    # the gradient is the analytic Jacobian: dy/dx = 1/scale per feature (× scale_ for MinMax)
    sc.transform(x).sum().backward()
    sk = SK_TWINS[i]().fit(X.numpy())
    slope = sk.transform(np.ones((1, 4))) - sk.transform(np.zeros((1, 4)))
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(slope, (5, 4)), rtol=1e-10)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_gradcheck_normalize(norm):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: nd.normalize(t, norm, axis=1), (x,))


def test_normalizer_on_tensors_matches_sklearn():
    X = wine()
    y = nd.Normalizer("l1").fit_transform(torch.from_numpy(X))
    np.testing.assert_allclose(y.numpy(), skp.Normalizer("l1").fit_transform(X), rtol=1e-12)


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("i", range(len(SCALERS)))
def test_layer_from_sklearn_scaler_matches_its_transform(i):
    X = wine()
    sk = SK_TWINS[i]().fit(X)
    layer = Normalization.from_scaler(sk, dtype=torch.float64)
    x = torch.from_numpy(X)
    np.testing.assert_allclose(layer(x).numpy(), sk.transform(X), rtol=1e-10, atol=1e-12)
    inv = Normalization.from_scaler(sk, invert=True, dtype=torch.float64)
    np.testing.assert_allclose(inv(layer(x)).numpy(), X, rtol=1e-10, atol=1e-10)
    ours = Normalization.from_scaler(SCALERS[i]().fit(X), dtype=torch.float64)
    np.testing.assert_allclose(ours(x).numpy(), sk.transform(X), rtol=1e-10, atol=1e-12)


def test_layer_adapt_over_batches_equals_sklearn_and_keras_formula():
    X = wine()
    X[::9, 3] = np.nan  # ignored in adapt
    X[:, 5] = 2.0  # constant: scale 1
    layer = Normalization(axis=-1, dtype=torch.float64).adapt(
        b for b in torch.from_numpy(X).split(37)
    )
    sk = skp.StandardScaler().fit(X)
    np.testing.assert_allclose(layer.loc.numpy(), sk.mean_, rtol=1e-12)
    np.testing.assert_allclose(layer.scale.numpy(), sk.scale_, rtol=1e-12)
    y = layer(torch.from_numpy(X))
    np.testing.assert_allclose(y.numpy(), sk.transform(X), rtol=1e-10, equal_nan=True)


def test_layer_channel_axis_on_images():
    x = (
        torch.randn(6, 3, 5, 4, dtype=torch.float64)
        * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
        + 2
    )
    layer = Normalization(axis=1, dtype=torch.float64).adapt(x)
    y = layer(x)
    per_channel = x.permute(1, 0, 2, 3).reshape(3, -1).numpy()
    mean, std = per_channel.mean(1), per_channel.std(1)
    want = (x.numpy() - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-12)


def test_layer_keras_style_mean_variance_and_gradcheck():
    layer = Normalization(mean=[1.0, 2.0], variance=[4.0, 0.0], dtype=torch.float64)
    x = torch.tensor([[3.0, 5.0]], dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(layer(x).detach().numpy(), [[1.0, 3.0]])  # zero variance → /1
    assert torch.autograd.gradcheck(layer, (x,))
    inv = Normalization(mean=[1.0, 2.0], variance=[4.0, 1.0], invert=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(inv, (x,))


def test_layer_state_dict_round_trip_into_a_lazy_layer():
    model = nn.Sequential(Normalization().adapt(torch.from_numpy(wine()).float()), nn.Linear(13, 1))
    fresh = nn.Sequential(Normalization(), nn.Linear(13, 1))
    fresh.load_state_dict(model.state_dict())
    x = torch.from_numpy(wine()[:7]).float()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_layer_errors():
    with pytest.raises(RuntimeError, match="not adapted"):
        Normalization()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expects 3 features"):
        Normalization(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="clip=True"):
        Normalization.from_scaler(skp.MinMaxScaler(clip=True).fit(wine()))
    with pytest.raises(ValueError, match="mean= and variance= together"):
        Normalization(mean=[0.0])


# ----------------------------------------------------------------------------- TargetScaler


def test_target_scaler_training_loop_predicts_in_original_units():
    """Least squares on scaled targets with a torch loop = scikit-learn on raw targets."""
    X, y = load_diabetes(return_X_y=True)
    y = y * 1000 + 5e4  # large, offset targets
    want = LinearRegression().fit(X, y).predict(X)

    xs = nd.StandardScaler().fit(X)
    ts = nd.TargetScaler().fit(y)
    x = torch.from_numpy(xs.transform(X))
    t = ts.transform(torch.from_numpy(y))
    assert t.shape == (len(y),) and abs(float(t.mean())) < 1e-12
    model = nn.Linear(10, 1, dtype=torch.float64)
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.mean((model(x).squeeze(1) - t) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    pred = ts.inverse_transform(model(x).squeeze(1).detach())
    np.testing.assert_allclose(pred.numpy(), want, rtol=1e-6)
    wrapped = ts.wrap(model).double()
    np.testing.assert_allclose(wrapped(x).squeeze(1).detach().numpy(), want, rtol=1e-6)


def test_target_scaler_with_minmax_and_2d_numpy():
    y = np.random.default_rng(0).random((30, 2)) * 100
    ts = nd.TargetScaler(nd.MinMaxScaler()).fit(y)
    z = ts.transform(y)
    np.testing.assert_allclose(z, skp.MinMaxScaler().fit_transform(y), rtol=1e-12)
    np.testing.assert_allclose(ts.inverse_transform(z), y, rtol=1e-12)


# ----------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("make, twin", list(zip(SCALERS[:4], SK_TWINS[:4], strict=True)))
def test_cuda_tensors_stay_on_device(make, twin):
    X = wine()
    X[::11, 2] = np.nan
    x = torch.from_numpy(X).cuda()
    sc = make()
    for chunk in x.split(50) if hasattr(sc, "partial_fit") else [x]:
        (sc.partial_fit if hasattr(sc, "partial_fit") else sc.fit)(chunk)
    assert sc.scale_.device.type == "cuda"
    for dtype in (torch.float32, torch.float64):
        y = sc.transform(x.to(dtype))
        assert y.device.type == "cuda" and y.dtype == dtype
        want = twin().fit(X).transform(X)
        np.testing.assert_allclose(
            y.double().cpu().numpy(), want, rtol=1e-5, atol=1e-5, equal_nan=True
        )
    # fitted on numpy, applied to a CUDA tensor: output on CUDA, differentiable
    xr = torch.from_numpy(X[:5]).cuda().requires_grad_()
    z = make().fit(X).transform(xr)
    assert z.device.type == "cuda"
    z.nansum().backward()
    assert xr.grad is not None and xr.grad.device.type == "cuda"


@cuda
def test_cuda_layer_and_normalize():
    X = torch.from_numpy(wine()).cuda()
    layer = Normalization(device="cuda", dtype=torch.float64).adapt(X.split(40))
    want = skp.StandardScaler().fit_transform(wine())
    np.testing.assert_allclose(layer(X).cpu().numpy(), want, rtol=1e-10)
    half = layer.half()(X.half())
    assert half.dtype == torch.float16 and half.device.type == "cuda"
    n = nd.normalize(X.float(), "l2", axis=1)
    np.testing.assert_allclose(n.cpu().numpy(), skp.normalize(wine()), rtol=1e-5)
