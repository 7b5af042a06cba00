"""Transformer and diffusion layers against their papers' formulas, torch.nn compositions,
diffusers (optional oracle) and Keras; the numba kernels (DyT, modulate) on hypothesis shapes.
Outputs and gradients of every layer on every backend and dtype: tests/specs.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import normkit
import normkit.nn as nkn
from normkit import functional as NF

BACKENDS = normkit.backends.available()
HAS_NUMBA = "numba" in BACKENDS


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _grads(f, *inputs: Tensor, seed: int = 9) -> list[Tensor]:
    inputs = [t.detach().requires_grad_() for t in inputs]
    y = f(*inputs)
    g = _randn(*y.shape, seed=seed, dtype=y.dtype)
    return [y.detach(), *torch.autograd.grad((y * g).sum(), inputs)]


# --------------------------------------------------------------------------- modulate


def _dit_modulate(x, shift, scale, gate, norm):
    """DiT's code: modulate(norm(x), shift, scale) = x * (1 + scale[:, None]) + shift[:, None]."""
    c = x.shape[-1]
    if norm == "layer":
        x = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6).to(x.dtype)(x)
    elif norm == "rms":
        x = nn.RMSNorm(c, elementwise_affine=False, eps=1e-6).to(x.dtype)(x)
    view = (x.shape[0], *([1] * (x.ndim - 2)), c)
    y = x * (1 + scale.reshape(view)) + shift.reshape(view)
    return y * gate.reshape(view)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["layer", "rms", None])
@pytest.mark.parametrize("shape", [(4, 9, 24), (1, 33, 16), (12, 2, 8), (5, 24)], ids=str)
def test_modulate_matches_dit_formula_and_gradients(backend, norm, shape):
    n, c = shape[0], shape[-1]
    x, sh, sc, gt = _randn(*shape), _randn(n, c, seed=1), _randn(n, c, seed=2), _randn(n, c, seed=3)
    ours = _grads(lambda *t: NF.modulate(*t, norm=norm, backend=backend), x, sh, sc, gt)
    want = _grads(lambda *t: _dit_modulate(*t, norm), x, sh, sc, gt)
    for a, b in zip(ours, want, strict=True):
        assert _err(a, b) <= 2e-5 * (1 + b.abs().max().item())


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 20),
    tokens=st.integers(1, 40),
    c=st.integers(1, 48),
    norm=st.sampled_from(["layer", "rms", None]),
    gate=st.booleans(),
)
def test_numba_modulate_float64_matches_reference_on_any_shape(n, tokens, c, norm, gate):
    """Covers both chunkings of the backward (whole samples per thread, or row ranges with
    per-chunk partial sums when there are fewer samples than chunks)."""
    x = _randn(n, tokens, c, dtype=torch.float64)
    sh, sc = _randn(n, c, seed=1, dtype=torch.float64), _randn(n, c, seed=2, dtype=torch.float64)
    gt = _randn(n, c, seed=3, dtype=torch.float64) if gate else None
    args = [t for t in (x, sh, sc, gt) if t is not None]

    def f(backend):
        def run(*t):
            return NF.modulate(t[0], t[1], t[2], t[3] if gate else None, norm=norm, backend=backend)

        return run

    for a, b in zip(_grads(f("numba"), *args), _grads(f("reference"), *args), strict=True):
        assert _err(a, b) < 1e-10


def test_modulate_errors_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"shift must have shape \(N, C\) = \(2, 8\)"):
        NF.modulate(torch.randn(2, 5, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="norm must be one of"):
        NF.modulate(torch.randn(2, 8), norm="group")


# --------------------------------------------------------------------------- DyT


@pytest.mark.parametrize("backend", BACKENDS)
def test_dyt_saturates_and_propagates_nan_like_torch(backend):
    x = torch.tensor([[0.0, 1e-6, -3e-4, 0.3, -2.0, 15.0, -40.0, math.inf, -math.inf, math.nan]])
    a, w, b = torch.tensor([0.9]), torch.full((10,), 1.5), torch.full((10,), -0.25)
    y = NF.dyt(x, a, w, b, backend=backend)
    want = w * torch.tanh(a * x) + b
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert _err(y[ok], want[ok]) < 1e-6


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_numba_dyt_float32_tanh_within_a_few_ulps_of_torch():
    x = torch.linspace(-12, 12, 200_001).reshape(1, -1)
    y = NF.dyt(x, torch.tensor([1.0]), backend="numba")
    rel = (y.double() - torch.tanh(x.double())).abs() / torch.tanh(x.double()).abs().clamp_min(
        1e-30
    )
    assert rel.max().item() < 8 * torch.finfo(torch.float32).eps


def test_dyt_rejects_wrong_feature_dim_and_alpha():
    with pytest.raises(ValueError, match="last dim is 8"):
        nkn.DyT(8)(torch.randn(2, 8, 3))
    with pytest.raises(ValueError, match="one-element tensor"):
        NF.dyt(torch.randn(2, 3), torch.ones(3))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 16), nkn.RMSNorm(16, zero_centered=True))
        self.ln_2dims = nn.LayerNorm((4, 16))
        self.bn = nn.BatchNorm1d(16)
        self.final = nkn.LayerNorm(16, bias=False)


def test_replace_norms_swaps_token_norms_and_keeps_their_affine():
    m = _Block()
    with torch.no_grad():
        m.attn_norm.weight.uniform_(0.5, 1.5)
        m.attn_norm.bias.uniform_(-1, 1)
        m.mlp[1].weight.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    nkn.replace_norms(m, "dyt", alpha_init=0.2)
    assert isinstance(m.attn_norm, nkn.DyT) and isinstance(m.mlp[1], nkn.DyT)
    assert isinstance(m.final, nkn.DyT) and m.final.bias is not None
    assert isinstance(m.ln_2dims, nn.LayerNorm) and isinstance(m.bn, nn.BatchNorm1d)
    assert m.attn_norm.alpha.item() == pytest.approx(0.2)
    assert torch.equal(m.attn_norm.weight, before["attn_norm.weight"])
    assert torch.equal(m.attn_norm.bias, before["attn_norm.bias"])
    assert torch.equal(m.mlp[1].weight, 1 + before["mlp.1.weight"])  # zero-centred: 1 + w
    assert torch.equal(m.mlp[1].bias, torch.zeros(16))
    with pytest.raises(ValueError, match="target must be one of"):
        nkn.replace_norms(m, "batchnorm")


def test_replace_norms_in_a_torch_transformer():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    nkn.replace_norms(layer)
    assert isinstance(layer.norm1, nkn.DyT) and isinstance(layer.norm2, nkn.DyT)
    assert layer(torch.randn(2, 5, 16)).shape == (2, 5, 16)


# --------------------------------------------------------------------------- conditional norms


def test_conditional_batch_norm_uses_each_samples_class_row():
    cbn = nkn.ConditionalBatchNorm2d(4, num_classes=3)
    with torch.no_grad():
        cbn.embed.weight.copy_(_randn(3, 8, seed=4))
    x, labels = _randn(6, 4, 3, 3), torch.tensor([0, 2, 1, 2, 0, 1])
    y = cbn(x, labels)
    base = nn.BatchNorm2d(4, affine=False)(x)
    gamma, beta = cbn.embed.weight[labels, :4], cbn.embed.weight[labels, 4:]
    want = gamma[:, :, None, None] * base + beta[:, :, None, None]
    assert _err(y, want) < 1e-5
    fresh = nkn.ConditionalBatchNorm2d(4, num_classes=3)
    assert _err(fresh(x, labels), base) < 1e-5  # γ = 1, β = 0 at init


def test_film_is_gamma_x_plus_beta_and_starts_as_identity():
    film = nkn.FiLM(6, cond_dim=4)
    x, c = _randn(3, 6, 5), _randn(3, 4, seed=1)
    assert torch.equal(film(x, c), x)
    with torch.no_grad():
        film.linear.weight.copy_(_randn(12, 4, seed=2))
    gamma, beta = film.linear(c).chunk(2, dim=1)
    assert _err(film(x, c), gamma[:, :, None] * x + beta[:, :, None]) < 1e-6
    tokens = nkn.FiLM(6, cond_dim=4, axis=-1)
    tokens.load_state_dict(film.state_dict())
    xt = x.transpose(1, 2)
    assert _err(tokens(xt, c), gamma[:, None] * xt + beta[:, None]) < 1e-6


def _calc_mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """From the AdaIN authors' PyTorch code (naoto0804/pytorch-AdaIN, function.py)."""
    n, c = feat.shape[:2]
    feat_var = feat.view(n, c, -1).var(dim=2) + eps
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), feat_var.sqrt().view(n, c, 1, 1)


def test_adain_matches_the_authors_code_and_transfers_the_statistics():
    content, style = _randn(2, 5, 8, 8, dtype=torch.float64), _randn(2, 5, 6, 6, seed=1) * 3 + 1
    style = style.double()
    y = nkn.AdaIN()(content, style)
    s_mean, s_std = _calc_mean_std(style)
    c_mean, c_std = _calc_mean_std(content)
    assert _err(y, (content - c_mean) / c_std * s_std + s_mean) < 1e-12
    y_mean, y_std = _calc_mean_std(y)
    assert _err(y_mean, s_mean) < 1e-12
    # the content's σ includes ε, so the output's σ is the style's up to ε/σ² corrections
    assert _err(y_std, s_std) < 1e-4
    stats = (s_mean.flatten(1), s_std.flatten(1))
    assert _err(nkn.AdaIN()(content, stats), y) < 1e-12


def _diffusers():
    return pytest.importorskip(
        "diffusers.models.normalization", reason="diffusers is the optional oracle"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaln_zero_matches_diffusers(backend):
    theirs = _diffusers().AdaLayerNormZero(32)
    ours = nkn.AdaLNZero(32, backend=backend)
    with torch.no_grad():
        ours.linear.weight.copy_(_randn(192, 32, seed=1) * 0.1)
        ours.linear.bias.copy_(_randn(192, seed=2) * 0.1)
    theirs.load_state_dict(ours.state_dict())
    x, c = _randn(3, 7, 32), _randn(3, 32, seed=3)
    for a, b in zip(ours(x, c), theirs(x, emb=c), strict=True):
        assert _err(a, b) < 1e-5


def test_adaln_zero_starts_as_identity_block():
    ada = nkn.AdaLNZero(16)
    x, c = _randn(2, 3, 16), _randn(2, 16, seed=1)
    y, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada(x, c)
    for t in (gate_msa, shift_mlp, scale_mlp, gate_mlp):
        assert torch.equal(t, torch.zeros_like(t))
    assert _err(y, F.layer_norm(x, (16,), eps=1e-6)) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaln_matches_diffusers_continuous(backend):
    theirs = _diffusers().AdaLayerNormContinuous(32, 12, elementwise_affine=False, eps=1e-6)
    ours = nkn.AdaLayerNorm(32, cond_dim=12, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x, c = _randn(3, 7, 32), _randn(3, 12, seed=3)
    assert _err(ours(x, c), theirs(x, c)) < 1e-5


def test_ada_group_norm_matches_diffusers():
    theirs = _diffusers().AdaGroupNorm(12, 16, 4, act_fn="silu")
    ours = nkn.AdaGroupNorm(12, 16, 4, act="silu")
    ours.load_state_dict(theirs.state_dict())
    x, e = _randn(2, 16, 5, 5), _randn(2, 12, seed=1)
    assert _err(ours(x, e), theirs(x, e)) < 1e-5


def test_conditioning_shape_errors():
    with pytest.raises(ValueError, match=r"shape \(N, 8\) with N = 2"):
        nkn.AdaLayerNorm(16, cond_dim=8)(torch.randn(2, 3, 16), torch.randn(3, 8))
    with pytest.raises(ValueError, match="integer class labels"):
        nkn.ConditionalBatchNorm2d(4, 3)(torch.randn(2, 4, 2, 2), torch.randn(2))


# --------------------------------------------------------------------------- QK-norm, unit norm


@pytest.mark.parametrize("kind", ["rms", "layer", "l2"])
def test_qknorm_normalizes_q_and_k_per_head_with_separate_parameters(kind):
    qk = nkn.QKNorm(16, kind)
    with torch.no_grad():
        qk.q_norm.weight.uniform_(0.5, 1.5)
    q, k = _randn(2, 4, 5, 16) * 7, _randn(2, 4, 5, 16, seed=1) * 0.1
    qn, kn = qk(q, k)
    twin = {
        "rms": lambda t, w: F.rms_norm(t, (16,), w, 1e-6),
        "layer": lambda t, w: F.layer_norm(t, (16,), w, None, 1e-6),
        "l2": lambda t, w: F.normalize(t, dim=-1) * w,
    }[kind]
    assert _err(qn, twin(q, qk.q_norm.weight)) < 1e-5
    assert _err(kn, twin(k, torch.ones(16))) < 1e-5
    if kind == "l2":  # cosine attention: |logit| ≤ 1 with unit gains
        assert (kn @ kn.transpose(-1, -2)).abs().max().item() <= 1 + 1e-5


def test_unit_normalization_unit_norm_and_zero_vector():
    x = torch.cat([_randn(3, 8) * 5, torch.zeros(1, 8)])
    y = nkn.UnitNormalization()(x)
    assert _err(y[:3].norm(dim=-1), torch.ones(3)) < 1e-6
    assert torch.equal(y[3], torch.zeros(8))
    y2 = nkn.UnitNormalization(axis=(1, 2))(_randn(2, 3, 4))
    assert _err(y2.flatten(1).norm(dim=-1), torch.ones(2)) < 1e-6


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 notes in keras
def test_unit_normalization_matches_keras():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is loaded with a non-torch backend in this process")
    x = _randn(4, 3, 6) * 3
    for axis in (-1, 1, [1, 2]):
        want = keras.ops.convert_to_numpy(keras.layers.UnitNormalization(axis=axis)(x))
        ours = nkn.UnitNormalization(axis=axis if isinstance(axis, int) else tuple(axis))(x)
        assert _err(ours, torch.from_numpy(want)) < 1e-6


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("placement", ["pre", "post", "deepnorm", "sandwich"])
def test_residual_norm_placements_follow_their_formulas(placement):
    torch.manual_seed(0)
    f = nn.Linear(8, 8)
    block = nkn.ResidualNorm(f, 8, placement, num_layers=6)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.rand(p.shape) * 0.1)
    x = _randn(3, 5, 8)
    n1 = lambda t: F.layer_norm(t, (8,), block.norm.weight, block.norm.bias)  # noqa: E731
    want = {
        "pre": lambda: x + f(n1(x)),
        "post": lambda: n1(x + f(x)),
        "deepnorm": lambda: n1(12**0.25 * x + f(x)),
        "sandwich": lambda: x + F.layer_norm(f(n1(x)), (8,), block.norm2.weight, block.norm2.bias),
    }[placement]()
    assert _err(block(x), want) < 1e-5


def test_deepnorm_coefficients_and_init_follow_the_paper():
    assert nkn.deepnorm_coefficients(6) == pytest.approx((12**0.25, 48**-0.25))
    assert nkn.deepnorm_coefficients(6, "decoder") == pytest.approx((12**0.25, 48**-0.25))
    (ae, be), (ad, bd) = nkn.deepnorm_coefficients(6, "encoder-decoder", 4)
    assert (ae, be) == pytest.approx(
        (0.81 * (6**4 * 4) ** (1 / 16), 0.87 * (6**4 * 4) ** (-1 / 16))
    )
    assert (ad, bd) == pytest.approx((12**0.25, 48**-0.25))
    torch.manual_seed(0)
    block = nn.ModuleDict({"q_proj": nn.Linear(512, 512), "fc": nn.Linear(512, 512)})
    nkn.deepnorm_init_(block, beta=0.25)
    xavier = math.sqrt(2 / (512 + 512))
    assert block["fc"].weight.std().item() == pytest.approx(0.25 * xavier, rel=0.02)
    assert block["q_proj"].weight.std().item() == pytest.approx(xavier, rel=0.02)
    assert torch.equal(block["fc"].bias, torch.zeros(512))
    with pytest.raises(ValueError, match="needs num_layers"):
        nkn.ResidualNorm(nn.Identity(), 8, "deepnorm")


def test_transformer_layers_have_get_norm_names():
    assert isinstance(nkn.get_norm("dyt", 8), nkn.DyT)
    assert isinstance(nkn.get_norm("adaln-zero", 8), nkn.AdaLNZero)
    assert isinstance(nkn.get_norm("adaln", 8, cond_dim=4), nkn.AdaLayerNorm)
    assert nkn.get_norm("adagn", 64, embedding_dim=8).num_groups == 32
    assert isinstance(nkn.get_norm("film", 8, cond_dim=3), nkn.FiLM)
    assert nkn.get_norm("qknorm", 8, kind="l2").kind == "l2"
    assert isinstance(nkn.get_norm("l2", 8), nkn.UnitNormalization)
