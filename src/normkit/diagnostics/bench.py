"""The cost of leaving :func:`normkit.diagnostics.watch` on: training steps of the lab's CNN (and
of its shape built from torch.nn layers, a wider CNN and a deep MLP) on the 8×8 digits with no
recorder, ``every=1``, ``every=10`` and ``every=1`` recording the gradients
only (``record=("gradients",)``), in one process, and with no-op hooks at the recorder's hook
sites (``hooks only``: what torch's hook dispatch alone costs).

Five copies of the model train side by side (unwatched, hooks only, one per setting),
interleaved in blocks of steps (one round: a block of each, in alternating order) so that
machine noise hits all of them alike; the reported time per step is the median over blocks, an
overhead the median over rounds of the ratio to the unwatched block of the same round (robust to
the machine's speed drifting between rounds). Only ratios measured in one run mean anything on a
shared machine. Runs as
``normkit doctor --overhead`` and as the ``diagnostics`` suite of ``normkit bench``.
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
from torch.autograd import Variable

from normkit.diagnostics._modules import leaf_modules
from normkit.diagnostics._recorder import Recorder, hook_output_grad, watch
from normkit.diagnostics.examples import deep_mlp, digits, digits_cnn

__all__ = ["CASES", "run_diagnostics_bench"]


def _lab_cnn() -> nn.Module:
    """The lab's CNN as its experiments build it (``normkit.lab.models.CNN(8, norm="bn")``,
    He init): convs with bias, normkit's BatchNorm2d."""
    from normkit.lab.models import CNN, init_weights

    model = CNN(8, norm="bn")
    init_weights(model, scheme="he")
    return model


CASES: dict[str, Callable[[], nn.Module]] = {
    "lab CNN (c=8, normkit BN)": _lab_cnn,
    "digits-cnn (lab shape, c=8, torch BN)": lambda: digits_cnn(8),
    "digits-cnn (c=32)": lambda: digits_cnn(32),
    "mlp 30×32 sigmoid": lambda: deep_mlp(30, 32),
}


def _block(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int, batch: int
) -> float:
    n = len(x) - batch
    t0 = time.perf_counter()
    for i in range(steps):
        j = (i * batch) % n
        xb = x[j : j + batch]
        loss = F.cross_entropy(model(xb), y[j : j + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


class _NoOpHooks:
    """The recorder's hook sites with nothing measured: a pre- and post-hook on the model, a
    forward hook per watched leaf that hooks its output's gradient (as the recorder does, by
    the tensor's hook dict on its node), an end-of-backward callback and optimizer pre/post
    hooks. What torch's hook dispatch alone costs, the floor under ``every=1``."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self._queued = False
        self.handles = [model.register_forward_pre_hook(self._noop)]
        self.handles += [
            m.register_forward_hook(self._leaf)
            for _, m in leaf_modules(model)
            if not isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity))
        ]
        self.handles += [
            model.register_forward_hook(self._noop),
            opt.register_step_pre_hook(self._noop),
            opt.register_step_post_hook(self._noop),
        ]

    def _noop(self, *args: Any) -> None:
        return None

    def _leaf(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.grad_fn is not None and out._backward_hooks is None:
            hook_output_grad(out, self._grad)

    def _grad(self, grad: Tensor) -> None:
        if not self._queued:
            Variable._execution_engine.queue_callback(self._end)
            self._queued = True

    def _end(self) -> None:
        self._queued = False


def run_diagnostics_bench(
    quick: bool,
    *,
    reps: int | None = None,
    device: str = "cpu",
    cases: dict[str, Callable[[], nn.Module]] | None = None,
) -> list[dict[str, Any]]:
    """Per case: ms per training step unwatched, with ``every=1`` and ``every=10``, and the
    overheads in % of the unwatched step (median over rounds of interleaved blocks of 20 steps).
    ``cases`` replaces :data:`CASES` (name → model factory taking 1×8×8 digits)."""
    blocks = reps or (8 if quick else 30)
    steps, batch = 20, 64
    x, y = digits()
    x, y = x.to(device), y.to(device)
    flat = x.flatten(1)
    if cases is None:
        cases = dict(list(CASES.items())[:1]) if quick else CASES
    rows = []
    for name, factory in cases.items():
        torch.manual_seed(0)
        base = factory().to(device)
        first = next(m for _, m in leaf_modules(base))
        xs = flat if isinstance(first, nn.Linear) else x  # MLPs take the 64 pixels flat
        models = {
            "off": base,
            "hooks only": copy.deepcopy(base),
            "every=1": copy.deepcopy(base),
            "every=1, gradients": copy.deepcopy(base),
            "every=10": copy.deepcopy(base),
        }
        opts = {
            k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for k, m in models.items()
        }
        floor = _NoOpHooks(models["hooks only"], opts["hooks only"])
        recs: dict[str, Recorder] = {
            "every=1": watch(models["every=1"], every=1, optimizer=opts["every=1"]),
            "every=1, gradients": watch(
                models["every=1, gradients"],
                every=1,
                optimizer=opts["every=1, gradients"],
                record=("gradients",),
            ),
            "every=10": watch(models["every=10"], every=10, optimizer=opts["every=10"]),
        }
        times: dict[str, list[float]] = {k: [] for k in models}
        try:
            for k, m in models.items():  # warm-up
                _block(m, opts[k], xs, y, steps, batch)
            for b in range(blocks):
                order = list(models) if b % 2 == 0 else list(reversed(models))
                for k in order:
                    times[k].append(_block(models[k], opts[k], xs, y, steps, batch))
        finally:
            for r in recs.values():
                r.close()
            for h in floor.handles:
                h.remove()
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        pct = {  # median over rounds of the ratio to the unwatched block of the same round
            k: round(100 * (statistics.median(map(truediv, v, times["off"])) - 1), 1)
            for k, v in times.items()
        }
        rows.append(
            {
                "case": name,
                "device": device,
                "threads": torch.get_num_threads(),
                "batch": batch,
                "ms_step_off": round(med["off"], 4),
                "ms_step_hooks_only": round(med["hooks only"], 4),
                "ms_step_every1": round(med["every=1"], 4),
                "ms_step_every10": round(med["every=10"], 4),
                "ms_step_every1_gradients": round(med["every=1, gradients"], 4),
                "overhead_hooks_only_pct": pct["hooks only"],
                "overhead_every1_pct": pct["every=1"],
                "overhead_every10_pct": pct["every=10"],
                "overhead_every1_gradients_pct": pct["every=1, gradients"],
                "recorded_steps_every1": len(recs["every=1"].steps),
            }
        )
    return rows


def _register() -> None:
    from normkit.bench._registry import register_suite

    register_suite(
        "diagnostics",
        run_diagnostics_bench,
        "overhead of normkit.diagnostics.watch on small training steps (every=1, every=10)",
    )


_register()
