"""The triton backend against the float64 reference.

On a CUDA machine the kernels run on the GPU. Without one they run under Triton's interpreter
(``TRITON_INTERPRET=1``, read when Triton is imported) on CPU tensors: the tests that need the
backend run in a subprocess with that variable set, so the rest of the suite sees the backend as
unavailable, as a user's CPU-only process does.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normkit
import normkit.functional as NF
from normkit import _reference as ref

ROOT = Path(__file__).parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
ACTIVE = "triton" in normkit.backends.available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_backend = pytest.mark.skipif(
    not ACTIVE, reason="needs Triton and a CUDA device or TRITON_INTERPRET=1 (run in a subprocess)"
)

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _pytest_interpreted(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package (pip install triton)")
@pytest.mark.skipif(ACTIVE, reason="the backend is active in this process: its tests run here")
def test_kernels_under_the_interpreter():
    """This file's kernel tests, on CPU tensors under Triton's interpreter."""
    out = _pytest_interpreted(__file__, "-k", "not interpreter and not spec_table")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package (pip install triton)")
@pytest.mark.skipif(ACTIVE, reason="the backend is active in this process: its tests run here")
def test_spec_table_under_the_interpreter():
    """The shared equivalence suite's triton rows, on CPU tensors under Triton's interpreter."""
    out = _pytest_interpreted("tests/test_equivalence.py", "-k", "triton")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs triton, no GPU")
def test_unavailable_on_cpu_without_the_interpreter():
    """Importing normkit sets nothing: without TRITON_INTERPRET=1 (and no GPU) no triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import os, normkit; print(normkit.backends.available(), 'TRITON_INTERPRET' in os.environ)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("]")[0].count("triton") == 0 and out.stdout.strip().endswith("False")


@needs_backend
def test_triton_declines_float64_and_auto_never_picks_it_on_cpu():
    reason = normkit.backends.get("triton").check("layer_norm", torch.randn(4, 8).double())
    assert reason is not None and "float64" in reason
    for dtype in TOL:
        big = torch.empty(1 << 14, 1 << 12, dtype=dtype)  # above the CUDA auto threshold
        assert normkit.backends.resolve("layer_norm", big).name != "triton"


@needs_backend
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(
    "shape, k", [((7, 33), 1), ((4, 5, 1000), 1), ((3, 6, 40), 2), ((2, 4096), 1)]
)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("affine", [True, False])
def test_triton_matches_float64_reference(op, shape, k, dtype, affine):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = (torch.randn(shape, device=DEVICE, generator=g) * 3 + 1).to(dtype).requires_grad_()
    ns = shape[-k:]
    w = (torch.rand(ns, device=DEVICE, generator=g) + 0.5).requires_grad_() if affine else None
    b = torch.randn(ns, device=DEVICE, generator=g).requires_grad_() if affine else None
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
    dy = torch.randn(shape, device=DEVICE, generator=g, dtype=torch.float64)
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


@needs_backend
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the auto threshold is for CUDA")
def test_triton_auto_choice_and_long_rows():
    small = torch.randn(64, 1024, device="cuda")
    assert normkit.backends.resolve("layer_norm", small).name == "torch"  # launch-bound: torch
    big = torch.empty(1 << 14, 1 << 12, device="cuda", dtype=torch.bfloat16)
    assert normkit.backends.resolve("layer_norm", big).name == "triton"
    long = torch.randn(2, 70000, device="cuda")
    y = NF.layer_norm(long, (70000,), backend="triton")
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(long, (70000,)))


@needs_backend
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(
    "shape, axis, channels_last",
    [((4, 6, 5, 5), 1, False), ((4, 6, 5, 5), 1, True), ((8, 3, 6), -1, False)],
)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_triton_batch_norm_matches_float64_reference(dtype, shape, axis, channels_last, train):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = (torch.randn(shape, device=DEVICE, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    c = shape[axis]
    w = (torch.rand(c, device=DEVICE, generator=g) + 0.5).requires_grad_()
    b = torch.randn(c, device=DEVICE, generator=g).requires_grad_()
    rm = torch.randn(c, device=DEVICE, generator=g)
    rv = torch.rand(c, device=DEVICE, generator=g) + 0.5
    ops = normkit.backends.get("triton").ops
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    if train:
        y, mean, var = ops["batch_norm_train"](x, w, b, 1e-5, axis)
        y64, mean64, var64 = ref.batch_norm(x64, None, None, w64, b64, True, 1e-5, axis)
        assert mean.dtype == var.dtype == torch.float32 and not mean.requires_grad
        torch.testing.assert_close(mean.double(), mean64.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var.double(), var64.detach(), rtol=1e-5, atol=1e-5)
    else:
        y = ops["batch_norm_eval"](x, rm, rv, w, b, 1e-5, axis)
        y64 = ref.batch_norm(x64, rm.double(), rv.double(), w64, b64, False, 1e-5, axis)[0]
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, device=DEVICE, generator=g, dtype=torch.float64)
    (y.double() * dy).sum().backward()
    (y64 * dy).sum().backward()
    tol = TOL[dtype]
    for a, e in ((y, y64), (x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        scale = e.abs().max().item()
        assert (a.double() - e).abs().max().item() <= tol * max(scale, 1.0) * 4


@needs_backend
def test_auto_never_picks_the_untimed_batch_norm_kernels():
    x = torch.empty(1, device=DEVICE).expand(64, 256, 64, 64)  # 2^26 elements, no memory
    for op in ("batch_norm_train", "batch_norm_eval"):
        assert not normkit.backends.get("triton").prefers(op, x)
