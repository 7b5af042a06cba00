"""Parity presets (``casting=``): bit for bit against Hugging Face transformers' norm modules.

The oracles are the transformers classes themselves (instantiated directly, no weights
downloaded): ``LlamaRMSNorm``, ``GemmaRMSNorm``, ``T5LayerNorm``. Forward: max |difference| = 0
in float32, bfloat16 and float16 on every backend that claims the preset. Backward: the torch
and reference backends run the same composition (bit for bit); numba's gradient is within twice
the oracle's own float32-vs-float64 error.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import normkit
from normkit import functional as NF
from normkit.nn import LayerNorm, RMSNorm

tf_llama = pytest.importorskip(
    "transformers.models.llama.modeling_llama", reason="transformers is the test oracle"
)
tf_gemma = pytest.importorskip("transformers.models.gemma.modeling_gemma")
tf_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")

HF = {
    "llama": tf_llama.LlamaRMSNorm,
    "gemma": tf_gemma.GemmaRMSNorm,
    "t5": tf_t5.T5LayerNorm,
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = normkit.backends.available()
HAS_NUMBA = "numba" in BACKENDS


def _hf(casting: str, n: int, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    m = HF[casting](n, eps=1e-6)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.randn(n, generator=g) * 0.5 + (0.0 if casting == "gemma" else 1.0))
    return m.to(dtype)


def _input(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 0.3).to(dtype)


def _declined(backend: str, x: Tensor) -> str | None:
    return normkit.backends.get(backend).check("rms_norm_cast", x)


def _maxdiff(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("casting", sorted(HF))
@pytest.mark.parametrize("shape", [(4, 7, 64), (3, 1000), (2, 4097), (5, 3)], ids=str)
def test_forward_is_bit_identical_to_transformers(casting, dtype, backend, shape):
    x = _input(shape, dtype)
    reason = _declined(backend, x)
    if reason is not None:
        pytest.skip(reason)
    hf = _hf(casting, shape[-1], dtype)
    ours = RMSNorm.from_hf(hf, backend=backend)
    want, got = hf(x), ours(x)
    assert got.dtype == want.dtype
    assert _maxdiff(got, want) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("casting", sorted(HF))
def test_backward_matches_transformers(casting, dtype, backend):
    shape = (6, 5, 96)
    x = _input(shape, dtype)
    reason = _declined(backend, x)
    if reason is not None:
        pytest.skip(reason)
    hf = _hf(casting, shape[-1], dtype)
    ours = RMSNorm.from_hf(hf, backend=backend)
    exact = RMSNorm.from_hf(hf, backend="reference").double()
    g = _input(shape, torch.float64, seed=2)

    def grads(m: nn.Module, xin: Tensor) -> list[Tensor]:
        xin = xin.detach().requires_grad_()
        (m(xin).double() * g).sum().backward()
        out = [xin.grad, m.weight.grad]
        m.weight.grad = None
        return out

    hf_g, our_g, ref_g = grads(hf, x), grads(ours, x), grads(exact, x.double())
    for mine, theirs, truth in zip(our_g, hf_g, ref_g, strict=True):
        assert mine.dtype == theirs.dtype
        if backend in ("torch", "reference"):  # the same composition as transformers
            assert _maxdiff(mine, theirs) == 0.0
        else:
            bound = 2 * _maxdiff(theirs, truth) + 1e-6 * truth.abs().max().item()
            assert _maxdiff(mine, truth) <= bound


def test_float32_weight_with_bfloat16_input_promotes_like_transformers():
    """Mixed dtypes (a float32 weight, bfloat16 activations) follow torch's promotion."""
    x = _input((4, 64), torch.bfloat16)
    for casting in HF:
        hf = _hf(casting, 64, torch.float32)
        ours = RMSNorm.from_hf(hf)
        want, got = hf(x), ours(x)
        assert got.dtype == want.dtype
        assert _maxdiff(got, want) == 0.0


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_numba_exact_paths_cover_what_the_kernel_cannot_order():
    """Non-contiguous inputs, a weight of another dtype and one long row (which torch sums in
    parallel pieces) are still exact on backend='numba'."""
    hf = _hf("llama", 40000, torch.float32)
    ours = RMSNorm.from_hf(hf, backend="numba")
    x = _input((1, 40000), torch.float32)
    assert _maxdiff(ours(x), hf(x)) == 0.0
    hf = _hf("gemma", 64, torch.float32)
    ours = RMSNorm.from_hf(hf, backend="numba")
    xt = _input((64, 10), torch.float32).t()
    assert _maxdiff(ours(xt), hf(xt)) == 0.0
    hf64 = _hf("llama", 64, torch.float64)
    ours = RMSNorm.from_hf(hf64, backend="numba")
    x = _input((3, 64), torch.float32)
    assert _maxdiff(ours(x), hf64(x)) == 0.0


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 3000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_numba_sum_of_squares_follows_torch_order(rows, n, dtype):
    from normkit.backends.numba import transformer as TF

    lanes = TF.torch_sum_lanes(dtype)
    assert lanes is not None
    x = _input((rows, n), dtype, seed=n)
    assert torch.equal(TF.torch_order_sumsq(x, lanes), x.pow(2).sum(-1))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_numba_declines_half_precision_presets_and_auto_falls_back():
    x = _input((4, 64), torch.bfloat16)
    reason = _declined("numba", x)
    assert reason is not None and "backend='torch'" in reason
    with pytest.raises(ValueError, match="cannot run rms_norm_cast"):
        NF.rms_norm(x, (64,), None, 1e-6, casting="llama", backend="numba")
    assert normkit.backends.resolve("rms_norm_cast", x).name != "numba"


def test_torch_casting_is_torch_nn():
    for dtype in (*DTYPES, torch.float64):
        x = _input((3, 4, 32), dtype)
        w = _input((32,), dtype, seed=5)
        assert (
            _maxdiff(
                NF.rms_norm(x, (32,), w, 1e-5, casting="torch"),
                torch.nn.functional.rms_norm(x, (32,), w, 1e-5),
            )
            == 0.0
        )
        tw = torch.nn.LayerNorm(32).to(dtype)
        with torch.no_grad():
            tw.weight.copy_(w)
        ours = LayerNorm(32, casting="torch", dtype=dtype)
        ours.load_state_dict(tw.state_dict())
        assert _maxdiff(ours(x), tw(x)) == 0.0


@pytest.mark.parametrize("casting", ["llama", "gemma", "fp32", None])
def test_layer_norm_presets_agree_with_float64_and_place_the_cast(casting):
    """The LayerNorm presets are within torch's own bfloat16 error of the float64 truth (llama
    rounds three times: x̂, the product, the sum; so its bound is twice as wide), and llama's
    output differs from the single-cast ones."""
    x = _input((8, 128), torch.bfloat16)
    w = _input((128,), torch.bfloat16, seed=3)
    b = _input((128,), torch.bfloat16, seed=4)
    truth = torch.nn.functional.layer_norm(x.double(), (128,), w.double(), b.double())
    torch_err = _maxdiff(torch.nn.functional.layer_norm(x, (128,), w, b), truth)
    y = NF.layer_norm(x, (128,), w, b, casting=casting)
    assert y.dtype == torch.bfloat16
    assert _maxdiff(y, truth) <= (4 if casting == "llama" else 2) * torch_err
    if casting == "llama":
        single = NF.layer_norm(x, (128,), w, b, casting="fp32")
        assert _maxdiff(y, single) > 0


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_zero_centered_weight_scales_by_one_plus_w(cls):
    m = cls(16, eps=1e-6, zero_centered=True, casting="fp32").double()
    assert m.offset == 1.0 and torch.equal(m.weight, torch.zeros(16, dtype=torch.float64))
    with torch.no_grad():
        m.weight.copy_(torch.linspace(-0.5, 0.5, 16))
    twin = (torch.nn.RMSNorm if cls is RMSNorm else torch.nn.LayerNorm)(16, eps=1e-6).double()
    with torch.no_grad():
        twin.weight.copy_(1 + m.weight)
    x = _input((5, 16), torch.float64)
    assert _maxdiff(m(x), twin(x)) < 1e-12
    plain = cls(16, eps=1e-6, offset=1.0).double()  # offset without a preset: default casting
    plain.load_state_dict(m.state_dict())
    assert _maxdiff(plain(x), twin(x)) < 1e-12


def test_from_hf_to_hf_round_trip_keeps_weights_and_bits():
    x = _input((4, 48), torch.bfloat16)
    for casting in HF:
        hf = _hf(casting, 48, torch.bfloat16)
        back = RMSNorm.from_hf(hf).to_hf()
        assert type(back) is type(hf)
        assert torch.equal(back.weight, hf.weight)
        assert _maxdiff(back(x), hf(x)) == 0.0


def test_preset_errors_name_the_fix():
    with pytest.raises(ValueError, match="one of"):
        RMSNorm(8, casting="mistral")
    with pytest.raises(ValueError, match="t5 is an RMS norm"):
        LayerNorm(8, casting="t5")
    with pytest.raises(ValueError, match=r"zero_centered=True means offset=1\.0"):
        RMSNorm(8, zero_centered=True, offset=0.5)
    with pytest.raises(ValueError, match="pass casting="):
        RMSNorm.from_hf(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no transformers module"):
        RMSNorm(8, casting="fp32").to_hf()
    with pytest.raises(ValueError, match="mask= and casting="):
        NF.layer_norm(torch.randn(2, 4), (4,), casting="llama", mask=torch.ones(2, 4) > 0)
