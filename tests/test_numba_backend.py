"""The numba backend beyond the shared spec table: larger shapes that exercise the blocked and
chunked code paths, numerics, the capability/auto rule, out= entry points, the JIT cache and
normkit without numba. Oracles: torch.nn.functional in float64, torch's own NaN behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

import normkit
import normkit.functional as NF
from normkit.backends import numba as NB

CL = torch.channels_last


def _x(shape, dtype=torch.float32, seed=0, offset=0.5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def _check(fn_ours, fn_ref, args, dtype, tol):
    """Outputs and input/param grads of ``fn_ours`` (dtype) vs ``fn_ref`` in float64."""
    ours = [a.detach().to(dtype).requires_grad_() for a in args]
    ref = [a.detach().double().requires_grad_() for a in args]
    for a, o in zip(args, ours, strict=True):
        if a.dim() == 4 and a.is_contiguous(memory_format=CL) and not a.is_contiguous():
            o.data = o.data.contiguous(memory_format=CL)
    y, ry = fn_ours(*ours), fn_ref(*ref)
    torch.testing.assert_close(y.double(), ry, rtol=tol, atol=tol)
    g = torch.randn(ry.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    y.backward(g.to(dtype))
    ry.backward(g)
    for o, r in zip(ours, ref, strict=True):
        scale = max(1.0, r.grad.abs().max().item())
        torch.testing.assert_close(o.grad.double(), r.grad, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_layer_and_rms_norm_many_rows(dtype):
    # More rows than chunks, a row length that is not a multiple of the SIMD width.
    x, w, b = _x((300, 133), dtype), _x((133,), dtype, 1), _x((133,), dtype, 2)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    _check(
        lambda x, w, b: NF.layer_norm(x, 133, w, b, backend="numba"),
        lambda x, w, b: F.layer_norm(x, (133,), w, b),
        (x, w, b),
        dtype,
        tol,
    )
    _check(
        lambda x, w: NF.rms_norm(x, 133, w, 1e-6, backend="numba"),
        lambda x, w: F.rms_norm(x, (133,), w, 1e-6),
        (x, w),
        dtype,
        tol,
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_train_blocked_paths(layout):
    # 16·9·9 = 1296 rows per channel: several 64-row blocks and chunks in the channels-last path.
    x = _x((16, 5, 9, 9), offset=3.0)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    w, b = _x((5,), seed=1), _x((5,), seed=2)

    def ours(x, w, b):
        return NF.batch_norm(x, None, None, w, b, True, backend="numba")

    def ref(x, w, b):
        return F.batch_norm(x, None, None, w, b, True)

    _check(ours, ref, (x, w, b), torch.float32, 1e-4)
    y = ours(x, w, b)
    assert y.is_contiguous(
        memory_format=CL if layout == "channels_last" else torch.contiguous_format
    )


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_batch_norm_any_axis_running_stats(axis):
    x = _x((6, 7, 70), torch.float64)
    c = x.shape[axis]
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    NF.batch_norm(x, rm, rv, None, None, True, 0.5, axis=axis, backend="numba")
    xm = x.movedim(axis, 0).reshape(c, -1)
    torch.testing.assert_close(rm, 0.5 * xm.mean(1))
    torch.testing.assert_close(rv, 0.5 + 0.5 * xm.var(1, unbiased=True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [1, 4, 12])
def test_group_norm_layouts(layout, groups):
    x = _x((3, 12, 10, 11))  # 110 positions: two 64-row blocks in the channels-last path
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    w, b = _x((12,), seed=1), _x((12,), seed=2)
    _check(
        lambda x, w, b: NF.group_norm(x, groups, w, b, backend="numba"),
        lambda x, w, b: F.group_norm(x, groups, w, b),
        (x, w, b),
        torch.float32,
        1e-4,
    )


def test_large_offset_statistics_stay_accurate():
    # |mean| / std = 1e4: a naive E[x²] − E[x]² in float32 would lose every digit.
    x = _x((64, 4, 32, 32), offset=1e4, scale=1.0)
    _y, mean, var = normkit.backends.get("numba").ops["batch_norm_train"](x, None, None, 1e-5, 1)
    ref_mean = x.double().mean((0, 2, 3))
    ref_var = x.double().var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=0)
    ln = NF.layer_norm(x.reshape(-1, 1024), 1024, backend="numba")
    ref = F.layer_norm(x.reshape(-1, 1024).double(), (1024,))
    assert (ln.double() - ref).abs().max().item() < 2e-2  # input rounding: ulp(1e4)/std


def test_nan_propagates_like_torch():
    x = _x((4, 64))
    x[1, 3] = float("nan")
    y = NF.layer_norm(x, 64, backend="numba")
    t = F.layer_norm(x, (64,))
    assert torch.equal(torch.isnan(y), torch.isnan(t))
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    k=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_layer_norm_hypothesis_shapes(shape, k, seed):
    k = min(k, len(shape) - 1) or 1
    x = _x(tuple(shape), torch.float64, seed)
    ns = tuple(shape[-k:])
    w = _x(ns, torch.float64, seed + 1)
    y = NF.layer_norm(x, ns, w, None, backend="numba")
    ref = F.layer_norm(x, ns, w)
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


def test_auto_rule_picks_numba_only_where_it_was_measured_faster():
    from normkit.backends import registry

    resolve = normkit.backends.resolve
    big = torch.empty(NB.MIN_NUMEL // 512, 512)
    cl = big.reshape(-1, 8, 8, 8).to(memory_format=CL)
    row = {"dir": "fwd", "device": "cpu", "dtype": "float32", "numel": NB.MIN_NUMEL}
    registry.set_auto_table(
        [
            {**row, "op": "layer_norm", "layout": "contiguous", "backend": "numba"},
            {**row, "op": "batch_norm_train", "layout": "channels_last", "backend": "numba"},
            {**row, "op": "batch_norm_eval", "layout": "contiguous", "backend": "torch"},
        ]
    )
    try:
        assert resolve("layer_norm", big).name == "numba"
        assert resolve("batch_norm_train", cl).name == "numba"
        assert resolve("batch_norm_train", cl.contiguous()).name == "torch"  # not measured
        assert resolve("batch_norm_eval", cl.contiguous()).name == "torch"  # measured slower
        assert resolve("layer_norm", torch.empty(8, 512)).name == "torch"  # too small
        assert resolve("layer_norm", big.bfloat16()).name == "torch"  # low precision
        assert resolve("layer_norm", big.t()).name == "torch"  # strided
    finally:
        registry.set_auto_table(None)


def test_explicit_numba_declines_other_devices_with_the_fix():
    x = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match=r"CPU only.*backend='auto'"):
        normkit.backends.resolve("layer_norm", x, "numba")


def test_low_precision_explicit_numba_computes_in_float32():
    x = _x((8, 32)).bfloat16()
    y = NF.rms_norm(x, 32, None, 1e-6, backend="numba")
    ref = F.rms_norm(x.double(), (32,), None, 1e-6)
    low = F.rms_norm(x, (32,), None, 1e-6)
    assert y.dtype == torch.bfloat16
    assert (y.double() - ref).abs().max() <= 2 * (low.double() - ref).abs().max() + 1e-2


@pytest.mark.parametrize(
    "op,args,ref",
    [
        (
            "layer_norm",
            lambda x, w, b: (x, (32,), w, b, 1e-5),
            lambda x, w, b: [F.layer_norm(x, (32,), w, b)],
        ),
        (
            "rms_norm",
            lambda x, w, b: (x, (32,), w, 1e-6),
            lambda x, w, b: [F.rms_norm(x, (32,), w, 1e-6)],
        ),
        (
            "group_norm",
            lambda x, w, b: (x.reshape(4, 32, 4), 4, w, b, 1e-5),
            lambda x, w, b: [F.group_norm(x.reshape(4, 32, 4), 4, w, b)],
        ),
        (
            "batch_norm_train",
            lambda x, w, b: (x.reshape(4, 32, 4), w, b, 1e-5, 1),
            lambda x, w, b: [F.batch_norm(x.reshape(4, 32, 4), None, None, w, b, True)],
        ),
    ],
)
def test_out_entry_points_write_in_place(op, args, ref):
    x, w, b = _x((16, 32)), _x((32,), seed=1), _x((32,), seed=2)
    a = args(x, w, b)
    out = [torch.full_like(a[0], float("nan"))]
    NB.OUT_OPS[op](*a, out=out)
    torch.testing.assert_close(out[0], ref(x, w, b)[0], rtol=1e-4, atol=1e-5)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nb"))
    assert NB.cache_dir() == tmp_path / "nb"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert NB.cache_dir() == tmp_path / "normkit" / "numba"
    assert os.environ.get("NUMBA_CACHE_DIR") is None


def test_normkit_works_without_numba():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch, normkit\n"
        "assert 'numba' not in normkit.backends.names(), normkit.backends.names()\n"
        "x = torch.randn(4, 8)\n"
        "y = normkit.functional.layer_norm(x, 8)\n"
        "assert torch.allclose(y, torch.nn.functional.layer_norm(x, (8,)), atol=1e-6)\n"
        "y, s = normkit.functional.add_rms_norm(x, x, 8)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_numba_kernels_leave_torch_thread_count_alone():
    """numba and torch share one OpenMP runtime: a kernel launch must not undo a user's
    torch.set_num_threads (it used to reset 1 -> 2 and slow parallel workers 10-30x)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = torch.randn(2048, 1024, requires_grad=True)
        NF.layer_norm(x, (1024,), backend="numba").sum().backward()
        NF.batch_norm(
            torch.randn(32, 64, 16, 16), torch.zeros(64), torch.ones(64), training=True,
            backend="numba",
        )  # fmt: skip
        assert torch.get_num_threads() == 1
        ref = F.layer_norm(x.detach(), (1024,))
        torch.testing.assert_close(NF.layer_norm(x.detach(), (1024,), backend="numba"), ref)
    finally:
        torch.set_num_threads(before)
