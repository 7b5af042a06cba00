"""The default suite: norm kernels of every normkit backend against torch eager (and compile).

Declarative specs (op, shape, dtype, layout, direction); for each the same process measures a
memory copy of the same bytes (the bandwidth limit), torch eager, optionally torch.compile
(cold compile time reported separately; with one intra-op thread all times are the calling
thread's CPU time), ``normkit auto`` (what a layer runs by default: the
backend the measured auto table picks) and every available normkit backend except the slow
``reference`` oracle. Backends that can write into caller-provided buffers (``numba``) are also
timed with reused outputs (``out=``), which removes the glibc page-fault cost of fresh outputs
≥ 32 MiB (see the README's "Speed" section). The first call in a fresh process (JIT cache load)
is measured in a subprocess per op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normkit import backends
from normkit import functional as NF
from normkit.bench._registry import register_suite
from normkit.bench.timing import measure_interleaved, row_metrics

__all__ = ["OPS", "SPECS", "BenchSpec", "first_call_seconds", "run_kernels_bench"]

OPS = (
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "batch_norm_eval",
    "group_norm",
    "add_layer_norm",
    "add_rms_norm",
    "rms_norm_llama",
    "dyt",
    "modulate",
)
_BN_SHAPE = (32, 64, 56, 56)
#: modulate's input: (samples, tokens, features), the 16384×1024 rows as 16 samples' tokens
_MODULATE_SHAPE = (16, 1024, 1024)


@dataclass(frozen=True)
class BenchSpec:
    """One measurement: ``op`` on an input of ``shape`` in ``layout``, forward or fwd+bwd."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"  # or "channels_last"
    direction: str = "fwd"  # or "fwd+bwd"
    groups: int = 32

    @property
    def label(self) -> str:
        return "x".join(map(str, self.shape))


def _specs(quick: bool) -> list[BenchSpec]:
    rows = [(4096, 4096), (16384, 1024), (512, 8192)]
    if quick:
        rows = [(16384, 1024)]
    out: list[BenchSpec] = []
    for op in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"):
        for shape in rows:
            for d in ("fwd", "fwd+bwd"):
                out.append(BenchSpec(op, shape, direction=d))
    for layout in ("contiguous", "channels_last"):
        for d in ("fwd", "fwd+bwd"):
            out.append(BenchSpec("batch_norm", _BN_SHAPE, layout=layout, direction=d))
            out.append(BenchSpec("group_norm", _BN_SHAPE, layout=layout, direction=d))
        out.append(BenchSpec("batch_norm_eval", _BN_SHAPE, layout=layout))
    # transformer ops against their unfused torch compositions (the Llama RMSNorm of
    # transformers; DyT as in its paper; DiT's LayerNorm-then-modulate)
    for d in ("fwd", "fwd+bwd"):
        out.append(BenchSpec("rms_norm_llama", (16384, 1024), direction=d))
        out.append(BenchSpec("dyt", (16384, 1024), direction=d))
        out.append(BenchSpec("modulate", _MODULATE_SHAPE, direction=d))
    if not quick:  # small tensors: where the auto rule's size threshold comes from
        for shape in ((16, 1024), (64, 1024), (256, 1024), (1024, 1024)):
            out.append(BenchSpec("layer_norm", shape, direction="fwd+bwd"))
        for bn_shape in ((8, 64, 8, 8), (8, 64, 16, 16), (8, 64, 32, 32)):
            out.append(BenchSpec("batch_norm", bn_shape, direction="fwd+bwd"))
    return out


SPECS: tuple[BenchSpec, ...] = tuple(_specs(False))


# --------------------------------------------------------------------------- inputs and callables


_Call = tuple[Callable[[], Any], Callable[[], Any] | None]  # (timed call, untimed setup)


def _copy_call(nbytes: int) -> _Call:
    """An in-process copy moving ``nbytes`` (half read, half written) into a reused buffer."""
    src = torch.randn(max(nbytes // 8, 1))
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), None


@dataclass
class _Case:
    inputs: list[Tensor]  # differentiable inputs (x, and residual for add_* ops)
    params: list[Tensor]  # weight/bias
    buffers: list[Tensor]  # running stats
    n_in: int  # big arrays read in the forward
    n_out: int  # big arrays written in the forward


def _make_case(spec: BenchSpec) -> _Case:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.shape, generator=g, dtype=spec.dtype)
    if spec.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    feat = (
        spec.shape[1]
        if spec.op in ("batch_norm", "batch_norm_eval", "group_norm")
        else spec.shape[-1]
    )
    w = torch.rand(feat, generator=g, dtype=spec.dtype) + 0.5
    b = torch.randn(feat, generator=g, dtype=spec.dtype)
    if spec.op == "dyt":
        return _Case([x], [torch.full((1,), 0.5, dtype=spec.dtype), w, b], [], 1, 1)
    if spec.op == "modulate":
        shift = torch.randn(spec.shape[0], feat, generator=g, dtype=spec.dtype)
        scale = torch.randn(spec.shape[0], feat, generator=g, dtype=spec.dtype)
        return _Case([x], [shift, scale], [], 1, 1)
    if spec.op.startswith("add_"):
        r = torch.randn(spec.shape, generator=g, dtype=spec.dtype)
        params = [w, b] if spec.op == "add_layer_norm" else [w]
        return _Case([x, r], params, [], 2, 2)
    params = [w] if spec.op in ("rms_norm", "rms_norm_llama") else [w, b]
    bufs = [torch.zeros(feat, dtype=spec.dtype), torch.ones(feat, dtype=spec.dtype)]
    return _Case([x], params, bufs if spec.op.startswith("batch_norm") else [], 1, 1)


def _bytes_moved(spec: BenchSpec, case: _Case) -> int:
    """Minimum bytes an ideal kernel moves: each big input read once, each output written once.

    Backward (fwd+bwd): reads the saved input (or sum), the output grad(s), writes the input grad.
    """
    elem = case.inputs[0].numel() * case.inputs[0].element_size()
    arrays = case.n_in + case.n_out
    if spec.direction == "fwd+bwd":
        arrays += 3 if case.n_in == 1 else 4
    return arrays * elem


def _torch_fn(spec: BenchSpec, case: _Case) -> Callable[..., Any]:
    """The plain-torch eager computation (the baseline): torch.nn.functional ops."""
    shape = spec.shape[-1:]
    rm, rv = [*case.buffers, None, None][:2]
    op = spec.op
    if op == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, shape, w, b, 1e-5)
    if op == "rms_norm":
        return lambda x, w: F.rms_norm(x, shape, w, 1e-6)
    if op == "add_layer_norm":

        def add_ln(x, r, w, b):
            s = x + r
            return F.layer_norm(s, shape, w, b, 1e-5), s

        return add_ln
    if op == "add_rms_norm":

        def add_rms(x, r, w):
            s = x + r
            return F.rms_norm(s, shape, w, 1e-6), s

        return add_rms
    if op == "rms_norm_llama":

        def llama(x, w):  # transformers' LlamaRMSNorm.forward
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
            return w * h.to(x.dtype)

        return llama
    if op == "dyt":
        return lambda x, a, w, b: w * torch.tanh(a * x) + b
    if op == "modulate":
        return lambda x, sh, sc: F.layer_norm(x, shape, eps=1e-6) * (1 + sc[:, None]) + sh[:, None]
    if op == "batch_norm":
        return lambda x, w, b: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    if op == "batch_norm_eval":
        return lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    if op == "group_norm":
        return lambda x, w, b: F.group_norm(x, spec.groups, w, b, 1e-5)
    raise ValueError(f"unknown benchmark op {op!r}; expected one of {OPS}")


def _normkit_fn(spec: BenchSpec, case: _Case, backend: str) -> Callable[..., Any]:
    shape = spec.shape[-1:]
    rm, rv = [*case.buffers, None, None][:2]
    op = spec.op
    if op == "layer_norm":
        return lambda x, w, b: NF.layer_norm(x, shape, w, b, 1e-5, backend=backend)
    if op == "rms_norm":
        return lambda x, w: NF.rms_norm(x, shape, w, 1e-6, backend=backend)
    if op == "add_layer_norm":
        return lambda x, r, w, b: NF.add_layer_norm(x, r, shape, w, b, 1e-5, backend=backend)
    if op == "add_rms_norm":
        return lambda x, r, w: NF.add_rms_norm(x, r, shape, w, 1e-6, backend=backend)
    if op == "rms_norm_llama":
        return lambda x, w: NF.rms_norm(x, shape, w, 1e-6, casting="llama", backend=backend)
    if op == "dyt":
        return lambda x, a, w, b: NF.dyt(x, a, w, b, backend=backend)
    if op == "modulate":
        return lambda x, sh, sc: NF.modulate(x, sh, sc, backend=backend)
    if op == "batch_norm":
        return lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, backend=backend)
    if op == "batch_norm_eval":
        return lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5, backend=backend)
    if op == "group_norm":
        return lambda x, w, b: NF.group_norm(x, spec.groups, w, b, 1e-5, backend=backend)
    raise ValueError(f"unknown benchmark op {op!r}; expected one of {OPS}")


def _clock() -> Callable[[], float]:
    """CPU time of the calling thread with one intra-op thread (every kernel then runs on it;
    time the core spends on other processes is left out), wall time otherwise."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def _registry_op(spec: BenchSpec) -> str:
    return {"batch_norm": "batch_norm_train", "rms_norm_llama": "rms_norm_cast"}.get(
        spec.op, spec.op
    )


def _prepare(spec: BenchSpec, case: _Case, fn: Callable[..., Any]) -> _Call:
    """A timed call of ``fn``: forward (no grad) or forward + backward with fixed output grads."""
    args = [*case.inputs, *case.params]
    if spec.direction == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                fn(*args)

        return fwd, None
    leaves = [t.detach().requires_grad_() for t in args]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]
    del outs

    def clear() -> None:
        for t in leaves:
            t.grad = None

    def fwd_bwd() -> None:
        o = fn(*leaves)
        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)

    return fwd_bwd, clear


def _first_run_seconds(spec: BenchSpec, case: _Case, fn: Callable[..., Any]) -> float:
    """Seconds of one call (forward, or forward + backward), e.g. including a compile."""
    args = [
        t.detach().requires_grad_(spec.direction != "fwd") for t in (*case.inputs, *case.params)
    ]
    t0 = time.perf_counter()
    with torch.set_grad_enabled(spec.direction != "fwd"):
        out = fn(*args)
        if spec.direction != "fwd":
            out = out if isinstance(out, tuple) else (out,)
            torch.autograd.backward([o.sum() for o in out])
    return time.perf_counter() - t0


def _registry_args(spec: BenchSpec, case: _Case) -> tuple[Any, ...]:
    """The op's arguments in the backend registry's calling convention."""
    x, shape = case.inputs[0], spec.shape[-1:]
    p = case.params
    if spec.op == "layer_norm":
        return (x, shape, p[0], p[1], 1e-5)
    if spec.op == "rms_norm":
        return (x, shape, p[0], 1e-6)
    if spec.op == "add_layer_norm":
        return (x, case.inputs[1], shape, p[0], p[1], 1e-5)
    if spec.op == "add_rms_norm":
        return (x, case.inputs[1], shape, p[0], 1e-6)
    if spec.op == "batch_norm":
        return (x, p[0], p[1], 1e-5, 1)
    if spec.op == "batch_norm_eval":
        return (x, *case.buffers, p[0], p[1], 1e-5, 1)
    return (x, spec.groups, p[0], p[1], 1e-5)


def _reused(spec: BenchSpec, case: _Case, backend: str) -> _Call | None:
    """A forward into preallocated outputs with the backend's ``out=`` entry point, if any."""
    if spec.direction != "fwd":
        return None
    entry = backends.get(backend).extra.get("out", {}).get(_registry_op(spec))
    if entry is None:
        return None
    outs = [torch.empty_like(case.inputs[0]) for _ in range(case.n_out)]
    args = _registry_args(spec, case)
    return (lambda: entry(*args, out=outs)), None


def first_call_seconds(op: str, backend: str = "numba", cache_dir: str | None = None) -> float:
    """Seconds of the first ``op`` call (forward + backward) in a fresh Python process.

    Imports are excluded. ``cache_dir`` points ``NUMBA_CACHE_DIR`` elsewhere (an empty
    directory measures a cold JIT compile).
    """
    code = f"""
import json, time, torch, normkit
from normkit.bench.kernels import BenchSpec, _make_case, _normkit_fn
spec = BenchSpec({op!r}, (64, 8, 16, 16) if {op!r} in ("batch_norm", "batch_norm_eval", "group_norm") else (256, 256), groups=4)
case = _make_case(spec)
fn = _normkit_fn(spec, case, {backend!r})
args = [t.requires_grad_() for t in (*case.inputs, *case.params)]
t0 = time.perf_counter()
out = fn(*args)
out = out if isinstance(out, tuple) else (out,)
torch.autograd.backward([o.sum() for o in out])
print(json.dumps(time.perf_counter() - t0))
"""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=env,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run_kernels_bench(
    quick: bool,
    ops: Sequence[str] | None = None,
    compile: bool = False,
    reps: int | None = None,
) -> list[dict[str, Any]]:
    """Measure every spec (filtered by ``ops``); one row per (spec, implementation)."""
    from rich.progress import Progress

    reps = reps or (7 if quick else 15)
    unknown = set(ops or ()) - set(OPS) - {"first_call"}
    if unknown:
        raise ValueError(f"unknown --ops {sorted(unknown)}; expected some of {list(OPS)}")
    specs = [s for s in _specs(quick) if ops is None or s.op in ops]
    contenders = [b for b in backends.available() if b != "reference"]
    rows: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"{spec.op} {spec.label} {spec.direction}")
            case = _make_case(spec)
            nbytes = _bytes_moved(spec, case)
            base = {
                "op": spec.op,
                "shape": spec.label,
                "dtype": str(spec.dtype).removeprefix("torch."),
                "layout": spec.layout,
                "dir": spec.direction,
            }
            calls: dict[str, _Call] = {"copy": _copy_call(nbytes)}
            calls["torch eager"] = _prepare(spec, case, _torch_fn(spec, case))
            colds: dict[str, float] = {}
            if compile:
                torch._dynamo.reset()
                compiled = torch.compile(_torch_fn(spec, case))
                colds["torch.compile"] = _first_run_seconds(spec, case, compiled)  # cold compile
                calls["torch.compile"] = _prepare(spec, case, compiled)
            for b in ("auto", *contenders):
                if b != "auto" and backends.get(b).check(_registry_op(spec), case.inputs[0]):
                    continue
                t0 = time.perf_counter()
                calls[f"normkit {b}"] = _prepare(spec, case, _normkit_fn(spec, case, b))
                colds[f"normkit {b}"] = time.perf_counter() - t0  # fwd+bwd: first forward
                reused = None if b == "auto" else _reused(spec, case, b)
                if reused is not None:
                    calls[f"normkit {b} out="] = reused
            # Interleaved: every round runs each implementation once, so a change of machine
            # load hits all of them alike instead of one implementation's whole block.
            timings = measure_interleaved(calls, reps=reps, clock=_clock())
            copy, eager = timings.pop("copy"), timings["torch eager"]
            for impl, t in timings.items():
                cold: float | None = None
                if impl == "torch.compile":
                    cold = colds[impl]
                elif impl in colds:  # a normkit backend: its first forward (+ backward) call
                    cold = colds[impl] + t.first
                row = {
                    **base,
                    "impl": impl,
                    **row_metrics(nbytes, t.median, copy.median, eager.median),
                }
                row["first ms"] = cold * 1e3 if cold is not None else None
                rows.append(row)
            progress.advance(task)
    if ops is None or "first_call" in ops:
        rows.extend(_first_call_rows(contenders, quick))
    return rows


def _first_call_rows(contenders: Sequence[str], quick: bool) -> list[dict[str, Any]]:
    """First forward+backward per op in a fresh process: cached JIT, and cold (empty cache)."""
    rows: list[dict[str, Any]] = []
    ops = ("layer_norm", "rms_norm", "add_layer_norm", "batch_norm", "group_norm")
    for b in contenders:
        if b == "torch":
            continue
        for op in ops:
            first_call_seconds(op, b)  # make sure the disk cache holds this op
            row: dict[str, Any] = {"op": op, "dir": "fwd+bwd", "impl": f"normkit {b}"}
            row["first call ms"] = first_call_seconds(op, b) * 1e3
            if not quick:
                with tempfile.TemporaryDirectory() as tmp:
                    row["cold JIT ms"] = first_call_seconds(op, b, cache_dir=tmp) * 1e3
            rows.append(row)
    return rows


register_suite(
    "kernels",
    run_kernels_bench,
    "norm kernels: every normkit backend vs torch eager/compile and a memory copy",
    default=True,
)
