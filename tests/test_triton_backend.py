"""The triton backend against the float64 reference on CUDA (skipped without a GPU + Triton)."""

from __future__ import annotations

import pytest
import torch

import normkit
import normkit.functional as NF
from normkit import _reference as ref

pytestmark = pytest.mark.skipif(
    "triton" not in normkit.backends.available(), reason="needs Triton and a CUDA device"
)

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def test_triton_is_not_offered_for_cpu_tensors():
    reason = normkit.backends.get("triton").check("layer_norm", torch.randn(4, 8))
    assert reason is not None and "CUDA" in reason


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(
    "shape, k", [((7, 33), 1), ((4, 5, 1000), 1), ((3, 6, 40), 2), ((2, 4096), 1)]
)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("affine", [True, False])
def test_triton_matches_float64_reference(op, shape, k, dtype, affine):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(shape, device="cuda", generator=g) * 3 + 1).to(dtype).requires_grad_()
    ns = shape[-k:]
    w = (torch.rand(ns, device="cuda", generator=g) + 0.5).requires_grad_() if affine else None
    b = torch.randn(ns, device="cuda", generator=g).requires_grad_() if affine else None
    if op == "layer_norm":
        y = NF.layer_norm(x, ns, w, b, 1e-5, backend="triton")
    else:
        y = NF.rms_norm(x, ns, w, 1e-6, backend="triton")
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_() if affine else None
    b64 = b.detach().double().requires_grad_() if affine else None
    if op == "layer_norm":
        y64 = ref.layer_norm(x64, ns, w64, b64, 1e-5)
    else:
        y64 = ref.rms_norm(x64, ns, w64, 1e-6)
    assert y.dtype == dtype
    dy = torch.randn(shape, device="cuda", generator=g, dtype=torch.float64)
    (y.double() * dy).sum().backward()
    (y64 * dy).sum().backward()
    tol = TOL[dtype]

    def close(a, b_):
        scale = b_.abs().max().item()
        assert (a.double() - b_).abs().max().item() <= tol * max(scale, 1.0)

    close(y, y64)
    close(x.grad, x64.grad)
    if affine:
        close(w.grad, w64.grad)
        if op == "layer_norm":
            close(b.grad, b64.grad)


def test_triton_auto_choice_and_long_rows():
    small = torch.randn(64, 1024, device="cuda")
    assert normkit.backends.resolve("layer_norm", small).name == "torch"  # launch-bound: torch
    big = torch.empty(1 << 14, 1 << 12, device="cuda", dtype=torch.bfloat16)
    assert normkit.backends.resolve("layer_norm", big).name == "triton"
    long = torch.randn(2, 70000, device="cuda")
    y = NF.layer_norm(long, (70000,), backend="triton")
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(long, (70000,)))
