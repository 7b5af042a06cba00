"""weight_norm / spectral_norm against torch's parametrizations (the oracle: outputs,
gradients, power-iteration state), old checkpoint layouts, remove_*, the Keras wrapper,
deepcopy/pickle and two forwards before one backward (pytorch#11476)."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P

import normkit.nn as nkn

F64 = torch.float64


def _layers():
    torch.manual_seed(0)
    return [
        nn.Linear(5, 4).double(),
        nn.Conv2d(3, 4, 3).double(),
        nn.ConvTranspose2d(3, 4, 3).double(),
    ]


def _input(m: nn.Module) -> torch.Tensor:
    return (
        torch.randn(2, 5, dtype=F64)
        if isinstance(m, nn.Linear)
        else torch.randn(2, 3, 6, 6, dtype=F64)
    )


@pytest.mark.parametrize("i", range(3))
@pytest.mark.parametrize("kind", ["weight", "spectral"])
def test_equal_to_torch_parametrizations_outputs_grads_and_state(i: int, kind: str):
    base = _layers()[i]
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    if kind == "weight":
        nkn.weight_norm(ours)
        P.weight_norm(theirs)
    else:
        torch.manual_seed(3)
        nkn.spectral_norm(ours, n_power_iterations=2)
        torch.manual_seed(3)
        P.spectral_norm(theirs, n_power_iterations=2)
    for _ in range(3):
        x = _input(base)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        ya.square().sum().backward()
        yb.square().sum().backward()
    for (ka, pa), (kb, pb) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert ka == kb
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-12, atol=1e-12)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)


def test_old_spectral_norm_checkpoint_loads_and_gives_the_same_eval_outputs():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = nn.utils.spectral_norm(nn.Conv2d(3, 4, 3).double())
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    for _ in range(3):
        old(x)  # a few power iterations
    old.eval()
    new = nkn.spectral_norm(nn.Conv2d(3, 4, 3).double()).eval()
    new.load_state_dict(old.state_dict())
    torch.testing.assert_close(new(x), old(x), rtol=1e-12, atol=1e-12)
    # the new layout loads too, both ways
    again = nkn.spectral_norm(nn.Conv2d(3, 4, 3).double()).eval()
    again.load_state_dict(new.state_dict())
    torch.testing.assert_close(again(x), old(x), rtol=1e-12, atol=1e-12)


def test_old_weight_norm_checkpoint_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = nn.utils.weight_norm(nn.Linear(5, 4).double())
    new = nkn.weight_norm(nn.Linear(5, 4).double())
    new.load_state_dict(old.state_dict())
    x = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(new(x), old(x), rtol=1e-12, atol=1e-12)


def test_remove_keeps_the_normalized_weight_and_says_what_is_missing():
    m = nkn.spectral_norm(nn.Linear(5, 4).double()).eval()
    x = torch.randn(3, 5, dtype=F64)
    y = m(x)
    nkn.remove_spectral_norm(m)
    assert sorted(m.state_dict()) == ["bias", "weight"]
    torch.testing.assert_close(m(x), y)
    w = nkn.weight_norm(nn.Linear(5, 4).double())
    y = w(x)
    nkn.remove_weight_norm(w)
    torch.testing.assert_close(w(x), y)
    with pytest.raises(ValueError, match="no weight_norm parametrization"):
        nkn.remove_weight_norm(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="name="):
        nkn.spectral_norm(nn.ReLU())
    with pytest.raises(ValueError, match="n_power_iterations"):
        nkn.spectral_norm(nn.Linear(2, 2), n_power_iterations=0)


def test_two_forwards_then_backward_deepcopy_and_pickle():
    m = nkn.SpectralNormalization(nn.Linear(5, 4), power_iterations=1)
    x = torch.randn(3, 5)
    loss = m(x).sum() + m(x).sum()
    loss.backward()  # torch's old spectral_norm failed here (in-place update of a saved buffer)
    assert m.layer.parametrizations.weight.original.grad is not None
    c = copy.deepcopy(m).eval()
    p = pickle.loads(pickle.dumps(m)).eval()
    m.eval()
    torch.testing.assert_close(c(x), m(x))
    torch.testing.assert_close(p(x), m(x))


def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    m = nkn.spectral_norm(nn.Linear(30, 20).double(), n_power_iterations=1)
    for _ in range(50):
        m(torch.randn(1, 30, dtype=F64))
    sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2)
    assert abs(float(sigma) - 1.0) < 1e-6


def test_lab_data_dependent_init_gives_standardized_preactivations():
    """The weight-norm experiment's init (Salimans & Kingma §3): every layer's pre-activation
    has mean 0 and std 1 on the init batch."""
    from normkit.examples.models import MLP
    from normkit.lab.experiments.weight_norm import _data_dependent_init

    torch.manual_seed(0)
    model = MLP(6, (5, 4), 3, act="sigmoid").double()
    for block in model.blocks:
        nkn.weight_norm(block[0])
    x = torch.randn(64, 6, dtype=F64) * 3 + 1
    _data_dependent_init(model, x)
    h = x
    for block in model.blocks:
        t = block[0](h)
        torch.testing.assert_close(
            t.mean(0), torch.zeros(t.shape[1], dtype=F64), atol=1e-12, rtol=0
        )
        # std is divided by (std + 1e-6): exact up to 1e-6 / std of the raw pre-activations
        torch.testing.assert_close(t.std(0), torch.ones(t.shape[1], dtype=F64), atol=1e-4, rtol=0)
        h = block(h)


@pytest.mark.parametrize(
    "producer",
    [
        lambda: nkn.StdConv2d(3, 4, 3),
        lambda: nkn.weight_norm(nn.Conv2d(3, 4, 3)),
        lambda: nkn.spectral_norm(nn.Conv2d(3, 4, 3)),
    ],
)
def test_fold_keeps_a_batch_norm_after_a_computed_weight_and_says_why(producer):
    from normkit.inference import fold_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(producer(), nn.BatchNorm2d(4), nn.ReLU()).double()
    model[1].running_mean.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    y = model(x)
    folded, report = fold_batchnorm(model, return_report=True)
    assert not report.folded
    assert any(w in report.skipped[0].reason for w in ("computed", "parametrized"))
    torch.testing.assert_close(folded(x), y)
