"""normkit.nn.BatchNormalization against Keras 3 itself (KERAS_BACKEND=torch), plus the torch/
Keras momentum convention and the lazy feature size."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported; never tensorflow

import numpy as np
import pytest
import torch

import normkit.nn as nkn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 notes in keras
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip("keras is loaded with a non-torch backend in this process", allow_module_level=True)


# Keras' float64 path itself is off the exact float64 formula by ~3e-7 (ours by ~5e-16), so the
# comparison with Keras uses float32-level tolerances.
RTOL, ATOL = 1e-5, 2e-6


def _np(t) -> np.ndarray:
    return keras.ops.convert_to_numpy(t).astype(np.float64)


@pytest.mark.parametrize(
    ("axis", "shape", "center", "scale", "momentum"),
    [
        (-1, (16, 7, 5), True, True, 0.99),
        (1, (8, 4, 3, 3), True, False, 0.9),
        (-1, (12, 6), False, True, 0.5),
    ],
    ids=["channels-last", "axis1-no-scale", "2d-no-center"],
)
def test_matches_keras_outputs_and_moving_statistics(axis, shape, center, scale, momentum):
    kw = {"axis": axis, "momentum": momentum, "center": center, "scale": scale}
    theirs = keras.layers.BatchNormalization(**kw, dtype="float64")
    ours = nkn.BatchNormalization(**kw).double()
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=shape) * 3 + 2
    theirs(x0, training=False)  # build
    ours(torch.as_tensor(x0))  # lazy init
    # non-trivial gamma/beta, same in both
    weights = [w + rng.uniform(0.5, 1.5, size=w.shape) for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_keras_weights(weights)
    ours.train()
    for step in range(4):
        x = rng.normal(size=shape) * 3 + 2
        yk = _np(theirs(torch.as_tensor(x), training=True))
        yo = ours(torch.as_tensor(x)).detach().numpy()
        np.testing.assert_allclose(yo, yk, rtol=RTOL, atol=ATOL, err_msg=f"step {step}")
    for a, b in zip(ours.keras_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    ours.eval()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(
        ours(torch.as_tensor(x)).detach().numpy(),
        _np(theirs(torch.as_tensor(x), training=False)),
        rtol=RTOL,
        atol=ATOL,
    )


def test_matches_keras_with_a_padding_mask():
    theirs = keras.layers.BatchNormalization(dtype="float64")
    ours = nkn.BatchNormalization().double()
    rng = np.random.default_rng(1)
    lengths = np.array([6, 2, 4])
    mask = np.arange(6)[None, :] < lengths[:, None]  # (N, L)
    for step in range(3):
        x = rng.normal(size=(3, 6, 4)) * 2 + 1
        yk = _np(theirs(torch.as_tensor(x), training=True, mask=torch.as_tensor(mask)))
        yo = ours(torch.as_tensor(x), torch.as_tensor(mask)).detach().numpy()
        # Keras adds its epsilon 1e-7 to the masked count: agree to ~1e-7 relative
        np.testing.assert_allclose(yo[mask], yk[mask], rtol=1e-6, atol=1e-6, err_msg=f"{step}")
    for a, b in zip(ours.keras_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_momentum_convention_equals_torch_with_one_minus_momentum():
    """Keras momentum 0.9 == torch momentum 0.1, apart from the biased vs unbiased variance."""
    ours = nkn.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5, num_features=3).double()
    bn = torch.nn.BatchNorm1d(3, momentum=0.1).double()
    for s in range(3):
        x = torch.randn(10, 3, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        torch.testing.assert_close(ours(x), bn(x))
    torch.testing.assert_close(ours.running_mean, bn.running_mean)
    # torch stores the unbiased variance n/(n-1)·σ², Keras the biased σ²: with var=1 initially,
    # r_keras = 0.9^3 + Σ 0.9^k 0.1 σ²_k and r_torch the same with σ²_k·10/9.
    assert not torch.allclose(ours.running_var, bn.running_var)


def test_lazy_size_state_dict_and_errors():
    m = nkn.BatchNormalization()
    assert m.num_features is None
    m(torch.randn(4, 9))
    assert m.num_features == 9 and m.weight.shape == (9,)
    fresh = nkn.BatchNormalization()
    fresh.load_state_dict(m.state_dict())  # lazy params take the checkpoint's shape
    assert fresh.num_features == 9
    with pytest.raises(ValueError, match="9 features on axis -1"):
        m(torch.randn(4, 8))
    with pytest.raises(ValueError, match="1 - torch's momentum"):
        nkn.BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="one dim less"):
        m(torch.randn(4, 3, 9), torch.ones(4, 3, 9, dtype=torch.bool))
    frozen = nkn.freeze_batchnorm(m)
    assert isinstance(frozen, nkn.FrozenBatchNorm) and frozen.axis == -1 and frozen.eps == 1e-3
