"""The one equivalence suite: every spec row × every available backend × dtype × train/eval.

Oracles: the float64 reference backend (outputs, input/weight/bias grads, running buffers after
several steps) and the torch.nn twin (same dtype for float32/float64; for low precision the
twin's own error against float64 bounds ours: |ours − ref64| ≤ 2·|twin_lowprec − ref64| + atol).
"""

from __future__ import annotations

import copy
from functools import cache
from unittest import mock

import pytest
import torch
from torch import Tensor, nn

import normkit
from normkit.backends import registry
from tests.specs import (
    DTYPES,
    LOW_PRECISION,
    SPECS,
    TOL,
    NormSpec,
    from_twin_state,
    randomize_params,
    to_twin_state,
)

BACKENDS = normkit.backends.available()
STEPS = 3


def _err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _close(a: Tensor, ref: Tensor, dtype: torch.dtype, bound: float = 0.0, what: str = "") -> None:
    rtol, atol = TOL[dtype]
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    tol = max(atol + rtol * scale, bound)
    err = _err(a, ref)
    assert err <= tol, f"{what}: max abs error {err:.3e} > tolerance {tol:.3e}"


def _randomize_buffers(m: nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _run(m: nn.Module, spec: NormSpec, dtype: torch.dtype, train: bool, grad_seed: int = 3):
    """Run STEPS forward/backward steps; return outputs, grads per step and the module."""
    m.train(train)
    outs = []
    for step in range(STEPS):
        x = spec.input(dtype, seed=step).requires_grad_()
        m.zero_grad(set_to_none=True)
        y = m(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed + step))
        (y.double() * g.double()).sum().backward()
        # parameters a mode does not use (SplitBatchNorm2d's auxiliary BNs in eval) get none
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
        outs.append((y.detach(), x.grad.detach(), grads))
    return outs


@cache
def _dispatched_ops(spec: NormSpec, train: bool) -> tuple[str, ...]:
    """The backend ops a layer resolves in one forward call (recorded on the reference backend)."""
    seen: list[str] = []
    real = registry.resolve

    def spy(op: str, x: Tensor, backend: str = "auto", **kw):
        seen.append(op)
        return real(op, x, backend, **kw)

    m = spec.make(backend="reference").double().train(train)
    with (
        mock.patch.object(registry, "resolve", spy),
        mock.patch.object(normkit.backends, "resolve", spy),
        torch.no_grad(),
    ):
        m(spec.input(torch.float64))
    return tuple(dict.fromkeys(seen))


def _skip_declined(spec: NormSpec, backend: str, dtype: torch.dtype, train: bool) -> None:
    """Skip, with the backend's reason, when it declines an op the layer runs (a backend may
    implement only some ops, e.g. triton has the row-wise norms only)."""
    b = normkit.backends.get(backend)
    ops = (spec.op,) if spec.op is not None else _dispatched_ops(spec, train)
    for op in ops:
        reason = b.check(op, spec.input(dtype))
        if reason is not None:
            pytest.skip(f"{backend} declines {op}: {reason}")


def _pair(spec: NormSpec, backend: str, dtype: torch.dtype, train: bool):
    _skip_declined(spec, backend, dtype, train)
    m = spec.make(backend=backend)
    randomize_params(m)
    _randomize_buffers(m)
    ref = copy.deepcopy(m).double()
    for mod in ref.modules():
        if hasattr(mod, "backend"):
            mod.backend = "reference"
    if dtype == torch.float64 or spec.params_in_input_dtype:
        m = m.to(dtype)
    return m, ref


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_backend_matches_float64_reference(spec: NormSpec, backend: str, dtype, train: bool):
    m, ref = _pair(spec, backend, dtype, train)
    ours = _run(m, spec, dtype, train)
    oracle = _run(ref, spec, torch.float64, train)

    bounds = [(0.0, 0.0, {})] * STEPS
    if dtype in LOW_PRECISION and spec.twin is not None:
        # torch.nn in the same low precision: its error against float64 widens our bound.
        twin = spec.twin()
        twin.load_state_dict(to_twin_state(spec, ref.state_dict()))
        twin = twin.to(dtype)
        low = _run(twin, spec, dtype, train)
        bounds = [
            (
                2 * _err(ly, oy),
                2 * _err(lgx, ogx),
                {n: 2 * _err(lg[k], og[n]) for n, k in zip(og, lg, strict=True)},
            )
            for (ly, lgx, lg), (oy, ogx, og) in zip(low, oracle, strict=True)
        ]
    for step, ((y, gx, gp), (ry, rgx, rgp), (by, bgx, bgp)) in enumerate(
        zip(ours, oracle, bounds, strict=True)
    ):
        assert y.dtype == dtype and y.shape == ry.shape
        if spec.channels_last:
            fmt = torch.channels_last if y.ndim == 4 else torch.channels_last_3d
            assert y.is_contiguous(memory_format=fmt), "output lost the input's memory format"
        _close(y, ry, dtype, by, f"step {step} output")
        _close(gx, rgx, dtype, bgx, f"step {step} input grad")
        assert gp.keys() == rgp.keys(), f"step {step}: parameters with gradients differ"
        for name, g in gp.items():
            _close(g, rgp[name], dtype, bgp.get(name, 0.0), f"step {step} grad of {name}")
    for name, buf in ref.named_buffers():
        mine = dict(m.named_buffers())[name]
        if buf.is_floating_point():
            _close(mine, buf, max(dtype, torch.float32, key=lambda d: TOL[d][1]), 0, name)
        else:
            assert torch.equal(mine, buf), name


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("spec", [s for s in SPECS if s.twin is not None], ids=lambda s: s.id)
def test_auto_matches_torch_nn(spec: NormSpec, dtype: torch.dtype, train: bool):
    m = spec.make()
    randomize_params(m)
    _randomize_buffers(m)
    twin = spec.twin()
    twin.load_state_dict(to_twin_state(spec, m.state_dict()))
    m, twin = m.to(dtype), twin.to(dtype)
    for (y, gx, gp), (ty, tgx, tgp) in zip(
        _run(m, spec, dtype, train), _run(twin, spec, dtype, train), strict=True
    ):
        _close(y, ty, dtype, what="output vs torch.nn")
        _close(gx, tgx, dtype, what="input grad vs torch.nn")
        tgp = from_twin_state(spec, tgp)
        for name, g in gp.items():
            _close(g, tgp[name], dtype, what=f"grad of {name} vs torch.nn")
    theirs = from_twin_state(spec, twin.state_dict())
    for name, buf in m.state_dict().items():
        if buf.is_floating_point():
            _close(buf, theirs[name], dtype, what=f"{name} vs torch.nn")
        else:
            assert torch.equal(buf, theirs[name]), name


@pytest.mark.parametrize("spec", [s for s in SPECS if s.twin is not None], ids=lambda s: s.id)
def test_state_dict_round_trip_with_torch_nn(spec: NormSpec):
    """A torch.nn state_dict loads strictly into the twin and back, giving the same outputs."""
    twin = spec.twin()
    randomize_params(twin)
    _randomize_buffers(getattr(twin, "bn", twin))
    ours = spec.make()
    ours.load_state_dict(from_twin_state(spec, twin.state_dict()), strict=True)
    back = spec.twin()
    back.load_state_dict(to_twin_state(spec, ours.state_dict()), strict=True)
    for mode in (False, True):  # eval first: train-mode calls move running stats
        for mm in (twin, ours, back):
            mm.train(mode)
        x = spec.input(torch.float32)
        with torch.no_grad():
            _close(ours(x), twin(x), torch.float32, what="normkit <- torch.nn")
            _close(back(x), ours(x), torch.float32, what="torch.nn <- normkit")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(spec: NormSpec, backend: str, train: bool):
    _skip_declined(spec, backend, torch.float64, train)
    m = spec.make(backend=backend).double()
    randomize_params(m)
    _randomize_buffers(m)
    m.train(train)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    x = spec.input(torch.float64).requires_grad_()

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_full_low_precision_module_keeps_float32_statistics():
    """A module converted to bfloat16 (params and buffers) still gives finite, accurate stats."""
    m = normkit.nn.BatchNorm2d(6).to(torch.bfloat16)
    x = (torch.randn(16, 6, 8, 8) * 3 + 100).to(torch.bfloat16)
    y = m(x)
    ref = normkit.nn.BatchNorm2d(6).double()(x.double())
    assert y.dtype == torch.bfloat16
    assert _err(y, ref) < 0.1
    assert torch.isfinite(m.running_var).all()
