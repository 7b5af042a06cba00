"""``optimize(model, example_inputs)``: fold BN, pick the norm backend and memory format that are
*measured* fastest on the example inputs, and prove the result matches the original.

Every candidate (memory format × norm backend) is the BN-folded model; candidates are timed
interleaved in one loop (so machine noise hits them alike), the median per candidate decides,
and the winner's output on the example inputs is checked against the original model's before it
is returned.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from normkit import backends
from normkit.inference.convert import TWINS, convert
from normkit.inference.fold import FoldReport, fold_batchnorm

__all__ = ["OptimizationError", "OptimizeReport", "optimize", "output_error"]

# (rtol, atol) of the output check, by output dtype; error allowed = atol + rtol·max|reference|.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}
# float32 convolutions/matmuls on CUDA run in TF32 by default (10-bit mantissa): folded and
# unfolded weights round differently, so the float32 check allows TF32-sized differences there.
TF32_TOLERANCE: tuple[float, float] = (2e-3, 1e-4)


class OptimizationError(RuntimeError):
    """The optimized model's output differs from the original's beyond the tolerance."""


@dataclass
class OptimizeReport:
    """What :func:`optimize` chose and measured (milliseconds, median over ``reps`` forwards).

    ``candidates`` maps each tried configuration (``"<memory format>/<norms>"``) to its time;
    ``rejected`` the ones whose output did not match, with the error.
    """

    fold: FoldReport
    channels_last: bool
    norm_backend: str | None
    baseline_ms: float
    optimized_ms: float
    max_abs_error: float
    tolerance: float
    candidates: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """``baseline_ms / optimized_ms`` (same process, interleaved measurements)."""
        return self.baseline_ms / self.optimized_ms

    def __str__(self) -> str:
        fmt = "channels_last" if self.channels_last else "contiguous"
        lines = [
            f"optimize: {self.baseline_ms:.2f} ms -> {self.optimized_ms:.2f} ms "
            f"({self.speedup:.2f}x); folded {len(self.fold.folded)} norm(s), {fmt}, "
            f"norm backend {self.norm_backend or 'unchanged'}; max |error| "
            f"{self.max_abs_error:.2e} (tolerance {self.tolerance:.2e})"
        ]
        lines += [f"  {k}: {v:.2f} ms" for k, v in self.candidates.items()]
        lines += [f"  rejected {k}: {v}" for k, v in self.rejected.items()]
        return "\n".join(lines)


def _leaves(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def _tf32_enabled() -> bool:
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def _default_tolerance(ref: Tensor) -> tuple[float, float]:
    if ref.dtype == torch.float32 and ref.device.type == "cuda" and _tf32_enabled():
        return TF32_TOLERANCE
    return TOLERANCE.get(ref.dtype, TOLERANCE[torch.float32])


def output_error(
    out: Any, ref: Any, tolerance: tuple[float, float] | None = None
) -> tuple[float, float]:
    """``(max |out − ref|, allowed)`` over every tensor of two model outputs (nested
    tuples/lists/dicts), with the allowance ``atol + rtol·max|ref|``; ``tolerance=(rtol, atol)``
    or, by default, the reference dtype's entry of :data:`TOLERANCE` (:data:`TF32_TOLERANCE` for
    float32 CUDA outputs while TF32 is allowed)."""
    a, b = _leaves(out), _leaves(ref)
    if len(a) != len(b):
        raise OptimizationError(
            f"the optimized model returns {len(a)} tensors, the original {len(b)}"
        )
    err, allowed = 0.0, 0.0
    for x, r in zip(a, b, strict=True):
        if x.shape != r.shape:
            raise OptimizationError(
                f"output shape changed: expected {tuple(r.shape)}, got {tuple(x.shape)}"
            )
        if not r.is_floating_point():
            err = max(err, float((x != r).sum().item()))
            continue
        rtol, atol = tolerance or _default_tolerance(r)
        scale = r.double().abs().max().item() if r.numel() else 0.0
        allowed = max(allowed, atol + rtol * scale)
        if r.numel():
            err = max(err, (x.double() - r.double()).abs().max().item())
    return err, allowed


def _to_channels_last(model: nn.Module) -> bool:
    """Put 4-D/5-D parameters and buffers in channels_last(_3d); True if any was converted."""
    changed = False
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.ndim)
            if fmt is not None and not t.is_contiguous(memory_format=fmt):
                t.data = t.data.contiguous(memory_format=fmt)
                changed = True
    return changed


def _has_norms(model: nn.Module) -> bool:
    kinds = tuple(t.torch_cls for t in TWINS)
    return any(
        type(m) in kinds or type(m).__module__.startswith("normkit.nn") for m in model.modules()
    )


def _with_backend(model: nn.Module, backend: str) -> nn.Module:
    out = convert(model, "normkit", backend=backend)
    for m in out.modules():
        if type(m).__module__.startswith("normkit.nn") and hasattr(m, "backend"):
            m.backend = backend  # type: ignore[assignment]  # a plain str attribute on a Module
    return out


def _call(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.inference_mode():
        return model(*inputs)


def _sync(inputs: tuple[Any, ...]) -> None:
    for x in inputs:
        if isinstance(x, Tensor) and x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            return


@overload
def optimize(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any],
    *,
    reps: int = ...,
    warmup: int = ...,
    tolerance: tuple[float, float] | None = ...,
    return_report: Literal[False] = ...,
) -> nn.Module: ...
@overload
def optimize(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any],
    *,
    reps: int = ...,
    warmup: int = ...,
    tolerance: tuple[float, float] | None = ...,
    return_report: Literal[True],
) -> tuple[nn.Module, OptimizeReport]: ...
def optimize(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any],
    *,
    reps: int = 10,
    warmup: int = 2,
    tolerance: tuple[float, float] | None = None,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, OptimizeReport]:
    """An inference-optimized copy of an eval-mode model, checked against the original.

    1. fold every batch norm that follows a conv/linear (:func:`fold_batchnorm`);
    2. build candidates: {contiguous, channels_last (only if the model has 4-D/5-D weights)} ×
       {norms as they are, every remaining norm converted to each available normkit backend};
    3. time every candidate *and the original* on ``example_inputs`` (interleaved, median of
       ``reps`` forwards under ``torch.inference_mode``) and keep the fastest;
    4. check the winner's output on ``example_inputs`` against the original's: error
       ``max|y − y_ref|`` must stay within ``atol + rtol·max|y_ref|`` (``tolerance=(rtol, atol)``,
       default by dtype from :data:`TOLERANCE`), else :class:`OptimizationError` is raised.

    Candidates whose output does not match are dropped (listed in ``report.rejected``). The
    original model is not modified. Measured, not assumed: on a different machine or input size
    the choice may differ — pass inputs shaped like production traffic.

    Args:
        model: an ``nn.Module`` in eval mode.
        example_inputs: a tensor or a tuple of positional arguments for ``model``.
        reps, warmup: timed and untimed forwards per candidate.
        tolerance: ``(rtol, atol)`` overriding the per-dtype default.
        return_report: also return an :class:`OptimizeReport` (choices, timings, speedup).

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> fast, report = optimize(model, torch.randn(2, 3, 16, 16), return_report=True)
    >>> report.speedup > 0                   # original time / optimized time, measured here
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module (got {type(model).__name__})")
    if model.training:
        raise ValueError(
            f"optimize needs a model in eval mode (got {type(model).__name__} in training mode); "
            "call model.eval() first"
        )
    if reps < 1 or warmup < 0:
        raise ValueError(f"optimize: need reps >= 1 and warmup >= 0 (got {reps}, {warmup})")
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    reference = _call(model, inputs)
    folded, fold_report = fold_batchnorm(model, return_report=True)

    norm_choices: list[str | None] = [None]
    if _has_norms(folded):
        norm_choices += [b for b in backends.available() if b != "reference"]
    layouts = [False]
    if any(t.ndim in (4, 5) for t in (*folded.parameters(), *folded.buffers())):
        layouts.append(True)

    candidates: dict[str, nn.Module] = {"original": model}
    choice: dict[str, tuple[bool, str | None]] = {}
    for cl in layouts:
        for nb in norm_choices:
            m = _with_backend(folded, nb) if nb is not None else copy.deepcopy(folded)
            if cl:
                _to_channels_last(m)
            name = f"{'channels_last' if cl else 'contiguous'}/{nb or 'as-is'}"
            candidates[name] = m
            choice[name] = (cl, nb)

    rejected: dict[str, str] = {}
    errors: dict[str, tuple[float, float]] = {}
    for name in list(choice):
        try:
            out = _call(candidates[name], inputs)
        except (ValueError, TypeError, NotImplementedError) as e:
            # a backend that cannot run these inputs (device, dtype) refuses with an error
            rejected[name] = f"{type(e).__name__}: {e}".split("\n")[0]
            del candidates[name], choice[name]
            continue
        err, allowed = output_error(out, reference, tolerance)
        errors[name] = (err, allowed)
        if not err <= allowed:
            rejected[name] = f"max |error| {err:.3e} > tolerance {allowed:.3e}"
            del candidates[name], choice[name]
    if not choice:
        worst = min(errors.values(), default=(float("nan"), float("nan")))
        raise OptimizationError(
            f"every optimized candidate differs from the original on the example inputs (best "
            f"max |error| {worst[0]:.3e} > tolerance {worst[1]:.3e}): {rejected}; check for "
            "layers whose eval output depends on the batch, or loosen tolerance=(rtol, atol)"
        )

    times: dict[str, list[float]] = {n: [] for n in candidates}
    for i in range(warmup + reps):
        for name, m in candidates.items():
            _sync(inputs)
            t0 = time.perf_counter()
            _call(m, inputs)
            _sync(inputs)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {n: sorted(v)[len(v) // 2] * 1e3 for n, v in times.items()}
    best = min(choice, key=lambda n: med[n])
    cl, nb = choice[best]
    result = candidates[best]
    err, allowed = output_error(_call(result, inputs), reference, tolerance)
    if not err <= allowed:
        raise OptimizationError(
            f"the optimized model differs from the original on the example inputs: max |error| "
            f"{err:.3e} > tolerance {allowed:.3e}"
        )
    report = OptimizeReport(
        fold=fold_report,
        channels_last=cl,
        norm_backend=nb,
        baseline_ms=med["original"],
        optimized_ms=med[best],
        max_abs_error=err,
        tolerance=allowed,
        candidates={n: med[n] for n in choice},
        rejected=rejected,
    )
    return (result, report) if return_report else result
