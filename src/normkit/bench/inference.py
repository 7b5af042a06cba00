"""The inference benchmark (``normkit bench --inference``): eval forward before and after
:func:`normkit.inference.optimize`, same process.

Cases: the ResNet-style CNN of :mod:`normkit.examples.models` on a batch of 8 RGB 128×128 images,
a BatchNorm MLP on 256×512, and a LayerNorm/RMSNorm MLP block on 2048 tokens × 256 (nothing to
fold: only the norm backend can change). ``optimize`` picks its configuration with its own
timings; the numbers reported here come from a *separate* interleaved loop over the original and
the optimized model (so the winner of a noisy selection is not reported with its lucky time).
Only the ratio measured in one run means anything on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normkit.bench._registry import register_suite
from normkit.examples.models import bn_mlp, ln_mlp, resnet_cnn
from normkit.inference.optimize import optimize

__all__ = ["CASES", "InferenceCase", "run_inference_bench"]


@dataclass(frozen=True)
class InferenceCase:
    """A named model factory and the shape of its input."""

    name: str
    model: Callable[[], nn.Module]
    shape: tuple[int, ...]


CASES: tuple[InferenceCase, ...] = (
    InferenceCase("resnet-cnn", resnet_cnn, (8, 3, 128, 128)),
    InferenceCase("mlp-bn", bn_mlp, (256, 512)),
    InferenceCase("mlp-ln", ln_mlp, (2048, 256)),
)


def _median_ms(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1e3


def _interleaved(
    models: dict[str, nn.Module], x: Tensor, reps: int, warmup: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(warmup + reps):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                if i >= warmup:
                    times[k].append(time.perf_counter() - t0)
    return {k: _median_ms(v) for k, v in times.items()}


def run_inference_bench(
    quick: bool = False,
    reps: int | None = None,
    *,
    cases: tuple[InferenceCase, ...] = CASES,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Optimize each case's model and time it against the original (float32, CPU).

    Returns one row per case: ``case``, ``shape``, ``threads``, ``folded``, ``channels_last``,
    ``norm_backend``, ``original_ms``, ``optimized_ms``, ``speedup`` (original / optimized,
    median of an interleaved loop), ``max_abs_error``.

    >>> rows = run_inference_bench(quick=True)  # doctest: +SKIP
    """
    warmup = 1 if quick else 3
    reps = reps or (5 if quick else 20)
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("inference bench", total=len(cases))
        for case in cases:
            bar.update(task, description=f"optimize {case.name}")
            model = case.model()
            x = torch.randn(case.shape, generator=torch.Generator().manual_seed(0))
            fast, rep = optimize(model, x, reps=reps, warmup=warmup, return_report=True)
            bar.update(task, description=f"time {case.name}")
            ms = _interleaved({"original": model, "optimized": fast}, x, reps, warmup)
            rows.append(
                {
                    "case": case.name,
                    "shape": "x".join(map(str, case.shape)),
                    "threads": torch.get_num_threads(),
                    "folded": len(rep.fold.folded),
                    "channels_last": rep.channels_last,
                    "norm_backend": rep.norm_backend or "as-is",
                    "original_ms": round(ms["original"], 3),
                    "optimized_ms": round(ms["optimized"], 3),
                    "speedup": round(ms["original"] / ms["optimized"], 3),
                    "max_abs_error": f"{rep.max_abs_error:.1e}",
                }
            )
            bar.advance(task)
    return rows


register_suite(
    "inference",
    run_inference_bench,
    "eval forward of a ResNet-style CNN and two MLPs before/after normkit.inference.optimize",
)
