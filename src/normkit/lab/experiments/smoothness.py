"""Santurkar et al. 2018: does BN make the loss landscape smoother?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normkit.examples.data import digits
from normkit.examples.models import MLP, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

ARM = {"none": "no norm", "bn": "BatchNorm"}


def probe_landscape(
    model: nn.Module, xb: Tensor, yb: Tensor, etas: Sequence[float]
) -> tuple[float, float, float]:
    """Move along the current gradient ``g`` (in ``p.grad``) and measure the landscape.

    Returns ``(loss range, gradient predictiveness, effective β-smoothness)`` over ``η`` in
    ``etas``: ``max−min of L(x − ηg)``, ``max ‖g − ∇L(x − ηg)‖`` and
    ``max ‖g − ∇L(x − ηg)‖ / ‖ηg‖`` (Santurkar et al. 2018, arXiv:1805.11604, Sec. 3.1).
    Parameters, gradients and BN running buffers are restored afterwards; the model stays in
    training mode (batch statistics), as during training.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    x0 = [p.detach().clone() for p in params]
    g = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
    gnorm = torch.sqrt(cast(Tensor, sum((gi.double() ** 2).sum() for gi in g))).item()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    losses, diffs, betas = [], [], []
    for eta in etas:
        with torch.no_grad():
            for p, xi, gi in zip(params, x0, g, strict=True):
                p.copy_(xi - eta * gi)
        loss = F.cross_entropy(model(xb), yb)
        g2 = torch.autograd.grad(loss, params)
        d = torch.sqrt(
            cast(Tensor, sum(((a - b).double() ** 2).sum() for a, b in zip(g, g2, strict=True)))
        )
        losses.append(loss.item())
        diffs.append(d.item())
        betas.append(d.item() / max(eta * gnorm, 1e-12))
    with torch.no_grad():
        for p, xi in zip(params, x0, strict=True):
            p.copy_(xi)
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    return max(losses) - min(losses), max(diffs), max(betas)


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "norm": n} for n in ("none", "bn") for s in seeds]


def _run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "vectors")
    torch.manual_seed(t["seed"])
    model = MLP(64, tuple(p["hidden"]), 10, norm=t["norm"], act="relu")
    init_weights(model, scheme="he")
    etas = [p["lr"] * m for m in p["eta_multipliers"]]
    curve: dict[str, list[float]] = {"step": [], "loss_range": [], "grad_pred": [], "beta": []}

    def on_step(step: int, m: nn.Module, xb: Tensor, yb: Tensor) -> None:
        if step == 1 or step % p["probe_every"] == 0:
            lr_, gp, beta = probe_landscape(m, xb, yb, etas)
            for k, v in zip(curve, (step, lr_, gp, beta), strict=True):
                curve[k].append(v)

    spec = TrainSpec(steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"])
    h = train(model, data, spec, seed=t["seed"], on_step=on_step)
    mean = {k: sum(v) / len(v) for k, v in curve.items() if k != "step"}
    return {
        **t,
        **{f"mean_{k}": v for k, v in mean.items()},
        **{f"curve_{k}": v for k, v in curve.items()},
        "final_test_acc": h.final_test_acc,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    metrics = ["mean_loss_range", "mean_grad_pred", "mean_beta", "final_test_acc"]
    table = aggregate(recs, ["norm"], metrics)
    names = {
        "mean_loss_range": "BN: smaller loss range along the gradient",
        "mean_grad_pred": "BN: smaller gradient change along the gradient (more predictive)",
        "mean_beta": "BN: smaller effective β-smoothness",
    }
    checks = [
        Check(
            name,
            m,
            V(recs, m, norm="bn"),
            V(recs, m, norm="none"),
            direction="lower",
            claimed_label="bn",
            baseline_label="none",
        )
        for m, name in names.items()
    ]
    notes = ["Each metric is averaged over the probe points of a run (one value per seed)."]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 3)
    for ax, (k, title) in zip(
        axes,
        (
            ("curve_loss_range", "loss range along −∇L"),
            ("curve_grad_pred", "max ‖∇L(x) − ∇L(x − η∇L)‖"),
            ("curve_beta", "effective β-smoothness"),
        ),
        strict=True,
    ):
        plots.curves(
            ax, recs, x="curve_step", y=k, label=lambda r: ARM[r["norm"]], title=title, logy=True
        )


register(
    Experiment(
        id="smoothness",
        title="BN makes the loss landscape smoother",
        claim="Batch normalization smoothens the loss function (Santurkar et al. 2018).",
        source="Santurkar et al. 2018 (VGG on CIFAR-10: loss range, gradient predictiveness and "
        "effective β-smoothness along the gradient during training)",
        quick={
            "hidden": [100, 100, 100],
            "steps": 300,
            "probe_every": 30,
            "lr": 0.1,
            "batch_size": 64,
            "eta_multipliers": [0.25, 0.5, 1.0, 2.0, 4.0],
        },
        full={
            "hidden": [100, 100, 100],
            "steps": 2000,
            "probe_every": 100,
            "lr": 0.1,
            "batch_size": 64,
            "eta_multipliers": [0.25, 0.5, 1.0, 2.0, 4.0],
        },
        tiny={
            "hidden": [16, 16],
            "steps": 6,
            "probe_every": 3,
            "lr": 0.1,
            "batch_size": 32,
            "eta_multipliers": [0.5, 2.0],
        },
        describe=lambda p: (
            f"Digits vectors; ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10 instead of VGG on "
            f"CIFAR-10; plain SGD lr {p['lr']}, batch {p['batch_size']}, {p['steps']} steps, with and "
            f"without BN. At step 1 and every {p['probe_every']} steps, on the current batch and "
            f"with the current gradient g: L(x − ηg) and ∇L(x − ηg) for η = lr × "
            f"{p['eta_multipliers']} (the paper's η range could not be confirmed; this one brackets "
            "the training step). BN layers use batch statistics during the probe (as in training)."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
