"""The cost of leaving :func:`normkit.diagnostics.watch` on: CPU training steps (SGD + momentum,
batch 32) of the lab's CNN on the 8×8 digits and of a ResNet-18-style CNN on random 3×64×64
images, with no recorder, ``every=10`` (the default), ``every=1``, and with no-op public hooks
at the recorder's hook sites on every step (``hooks only``: what torch's hook dispatch alone
costs, the floor under ``every=1``).

Copies of the model train side by side, interleaved in blocks of steps (one round: a block of
each, in alternating order; a block is a multiple of 10 steps, so every ``every=10`` block holds
one recorded step) so that machine noise hits all of them alike; the reported time per step is
the median over blocks, an overhead the median over rounds of the ratio to the unwatched block
of the same round (robust to the machine's speed drifting between rounds). Only ratios measured
in one run mean anything on a shared machine. Runs as ``normkit doctor --overhead`` and as the
``diagnostics`` suite of ``normkit bench``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from operator import truediv
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normkit.diagnostics._modules import leaf_modules
from normkit.diagnostics._recorder import Recorder, watch
from normkit.examples.data import digits_images
from normkit.examples.models import CNN, init_weights, resnet18

__all__ = ["CASES", "Case", "run_diagnostics_bench"]


def _lab_cnn() -> nn.Module:
    """The lab's CNN as its experiments build it (``normkit.examples.models.CNN(8, norm="bn")``,
    He init): convs with bias, normkit's BatchNorm2d."""
    model = CNN(8, norm="bn")
    init_weights(model, scheme="he")
    return model


def _random_images() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(256, 3, 64, 64, generator=g), torch.randint(0, 10, (256,), generator=g)


#: A benchmark case: model factory, data factory, steps per block.
Case = tuple[Callable[[], nn.Module], Callable[[], tuple[Tensor, Tensor]], int]

CASES: dict[str, Case] = {
    "lab CNN (c=8, normkit BN), digits 1×8×8": (_lab_cnn, digits_images, 20),
    "ResNet-18-style CNN, 3×64×64": (lambda: resnet18(10), _random_images, 10),
}


def _block(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int, batch: int
) -> float:
    n = len(x) - batch
    t0 = time.perf_counter()
    for i in range(steps):
        j = (i * batch) % n
        loss = F.cross_entropy(model(x[j : j + batch]), y[j : j + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


class _NoOpHooks:
    """The recorder's hook sites with nothing measured, on every step: a pre-hook on the model,
    a forward hook per watched leaf that registers a tensor hook on its output, a tensor hook
    per parameter and optimizer pre/post hooks."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.handles = [model.register_forward_pre_hook(self._noop)]
        self.handles += [
            m.register_forward_hook(self._leaf)
            for _, m in leaf_modules(model)
            if not isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity))
        ]
        self.handles += [p.register_hook(self._noop) for p in model.parameters() if p.requires_grad]
        self.handles += [
            opt.register_step_pre_hook(self._noop),
            opt.register_step_post_hook(self._noop),
        ]

    def _noop(self, *args: Any) -> None:
        return None

    def _leaf(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._noop)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run_diagnostics_bench(
    quick: bool,
    *,
    reps: int | None = None,
    device: str = "cpu",
    cases: dict[str, Case] | None = None,
) -> list[dict[str, Any]]:
    """Per case: ms per training step unwatched, with no-op hooks, ``every=1`` and
    ``every=10``, and the overheads in % of the unwatched step (median over rounds of
    interleaved blocks); and the ms per recorded step that turning the pending measurements
    into metrics costs when the results are read (``ms_convert_per_record``: the ``every=1``
    recorder's :meth:`~normkit.diagnostics.Recorder.close`, which reads them, over its recorded
    steps; a run pays it once per :data:`~normkit.diagnostics._store.MAX_PENDING` measurements
    or when read). ``cases`` replaces :data:`CASES` (name → (model factory, data
    factory, steps per block)); ``quick`` runs the first case with 8 rounds."""
    rounds = reps or (8 if quick else 20)
    batch = 32
    if cases is None:
        cases = dict(list(CASES.items())[:1]) if quick else CASES
    rows = []
    for name, (factory, data, steps) in cases.items():
        torch.manual_seed(0)
        base = factory().to(device)
        x, y = (t.to(device) for t in data())
        models = {k: copy.deepcopy(base) for k in ("off", "hooks only", "every=1", "every=10")}
        opts = {
            k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()
        }
        floor = _NoOpHooks(models["hooks only"], opts["hooks only"])
        recs: dict[str, Recorder] = {
            k: watch(models[k], every=every, optimizer=opts[k])
            for k, every in (("every=1", 1), ("every=10", 10))
        }
        times: dict[str, list[float]] = {k: [] for k in models}
        try:
            for k, m in models.items():  # warm-up
                _block(m, opts[k], x, y, steps, batch)
            for r in range(rounds):
                order = list(models) if r % 2 == 0 else list(reversed(models))
                for k in order:
                    times[k].append(_block(models[k], opts[k], x, y, steps, batch))
        finally:
            t0 = time.perf_counter()
            recs["every=1"].close()  # (converts what is pending: what reading it costs)
            convert = time.perf_counter() - t0
            recs["every=10"].close()
            floor.remove()
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        pct = {  # median over rounds of the ratio to the unwatched block of the same round
            k: round(100 * (statistics.median(map(truediv, v, times["off"])) - 1), 2)
            for k, v in times.items()
        }
        rows.append(
            {
                "case": name,
                "device": device,
                "threads": torch.get_num_threads(),
                "batch": batch,
                "rounds": rounds,
                "steps_per_block": steps,
                "ms_step_off": round(med["off"], 4),
                "ms_step_hooks_only": round(med["hooks only"], 4),
                "ms_step_every1": round(med["every=1"], 4),
                "ms_step_every10": round(med["every=10"], 4),
                "overhead_hooks_only_pct": pct["hooks only"],
                "overhead_every1_pct": pct["every=1"],
                "overhead_every10_pct": pct["every=10"],
                "recorded_steps_every1": len(recs["every=1"].steps),
                "recorded_steps_every10": len(recs["every=10"].steps),
                "ms_convert_per_record": round(convert * 1e3 / len(recs["every=1"].steps), 4),
            }
        )
    return rows


def _register() -> None:
    from normkit.bench._registry import register_suite

    register_suite(
        "diagnostics",
        run_diagnostics_bench,
        "overhead of normkit.diagnostics.watch on CPU training steps (every=10, every=1)",
    )


_register()
