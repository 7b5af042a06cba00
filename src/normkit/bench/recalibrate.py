"""The recalibration benchmark (``normkit bench --recalibrate``): the cost of
:func:`normkit.nn.recalibrate_batchnorm` over ``B`` batches against one eval pass over the same
batches, interleaved in one run (the target: at most 1.2x).

Cases: the ResNet-style CNN of :mod:`normkit.examples.models` (BatchNorm2d after every conv)
on 8×3×64×64 batches, and its BatchNorm MLP on 256×512 batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from normkit.bench._registry import register_suite
from normkit.examples.models import bn_mlp, resnet_cnn
from normkit.nn import recalibrate_batchnorm

__all__ = ["run_recalibrate_bench"]

CASES: tuple[tuple[str, Callable[[], nn.Module], tuple[int, ...]], ...] = (
    ("resnet-cnn", resnet_cnn, (8, 3, 64, 64)),
    ("mlp-bn", bn_mlp, (256, 512)),
)


def _eval_pass(model: nn.Module, batches: list[Tensor]) -> None:
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(b)


def run_recalibrate_bench(
    quick: bool = False, reps: int | None = None, **_: Any
) -> list[dict[str, Any]]:
    """Time ``recalibrate_batchnorm`` and an eval pass over the same batches, alternating.

    Returns one row per case: ``case``, ``batches``, ``shape``, ``threads``, ``eval_ms``,
    ``recalibrate_ms`` (medians over ``reps`` alternating rounds) and ``ratio``.

    >>> rows = run_recalibrate_bench(quick=True, reps=1)  # doctest: +SKIP
    """
    n = 20 if quick else 100
    reps = reps or (3 if quick else 5)
    rows = []
    for name, make, shape in CASES:
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(shape, generator=g) for _ in range(n)]
        model = make()
        times: dict[str, list[float]] = {"eval": [], "recalibrate": []}
        _eval_pass(model, batches[:2])  # warm-up
        for _round in range(reps):
            t0 = time.perf_counter()
            _eval_pass(model, batches)
            times["eval"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            recalibrate_batchnorm(model, batches, progress=False)
            times["recalibrate"].append(time.perf_counter() - t0)
        ms = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        rows.append(
            {
                "case": name,
                "batches": n,
                "shape": "x".join(map(str, shape)),
                "threads": torch.get_num_threads(),
                "eval_ms": round(ms["eval"], 2),
                "recalibrate_ms": round(ms["recalibrate"], 2),
                "ratio": round(ms["recalibrate"] / ms["eval"], 3),
            }
        )
    return rows


register_suite(
    "recalibrate",
    run_recalibrate_bench,
    "recalibrate_batchnorm over B batches against one eval pass over the same batches",
)
