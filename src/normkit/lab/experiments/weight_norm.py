"""Salimans & Kingma 2016: weight normalization speeds up convergence like batch norm, without
depending on the batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit.examples.data import digits
from normkit.examples.models import MLP, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check
from normkit.nn import weight_norm

ARMS = ("none", "wn", "wn-init", "bn")
LABEL = {
    "none": "plain",
    "wn": "weight norm",
    "wn-init": "weight norm + data init",
    "bn": "batch norm",
}


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "arm": a} for a in ARMS for s in seeds]


@torch.no_grad()
def _data_dependent_init(model: MLP, x: Tensor) -> None:
    """Salimans & Kingma §3: set each layer's g and b so that its pre-activations have mean 0
    and standard deviation 1 on a batch, layer by layer."""
    h = x.flatten(1)
    for block in model.blocks:
        assert isinstance(block, nn.Sequential)
        lin: Any = block[0]  # weight-normed: its parametrizations are attributes set at run time
        t = lin(h)
        mean, std = t.mean(0), t.std(0) + 1e-6
        lin.parametrizations.weight.original0.div_(std[:, None])
        lin.bias.sub_(mean).div_(std)
        h = block(h)


def _run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "vectors")
    torch.manual_seed(t["seed"])
    arm = t["arm"]
    model = MLP(64, tuple(p["hidden"]), 10, norm="bn" if arm == "bn" else "none", act="sigmoid")
    init_weights(model, scheme="lecun")
    if arm.startswith("wn"):
        for block in model.blocks:
            assert isinstance(block, nn.Sequential)
            weight_norm(block[0])
        weight_norm(model.head)
        if arm == "wn-init":
            _data_dependent_init(model, data.x_train[: p["init_batch"]])
    spec = TrainSpec(
        steps=p["steps"],
        lr=p["lr"],
        batch_size=p["batch"],
        eval_every=p["eval_every"],
        target=p["target"],
    )
    h = train(model, data, spec, seed=t["seed"])
    reached = h.steps_to_target
    return {
        **t,
        "step": h.steps,
        "test_acc_curve": h.test_acc,
        # not reached within the budget: counted as one evaluation past it (a finite worst value)
        "steps_to_target": reached if reached is not None else p["steps"] + p["eval_every"],
        "reached": reached is not None,
        "test_acc": h.final_test_acc,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["arm"], ["steps_to_target", "test_acc"])
    target = f"{p['target']:.0%}"

    def check(arm: str, base: str, metric: str, **kw: Any) -> Check:
        faster = metric == "steps_to_target"
        what = (
            f"reaches {target} test accuracy in fewer steps than"
            if faster
            else ("ends with a higher test accuracy than")
        )
        return Check(
            f"{LABEL[arm]} {what} {LABEL[base]}",
            metric,
            V(recs, metric, arm=arm),
            V(recs, metric, arm=base),
            direction="lower" if faster else "higher",
            claimed_label=LABEL[arm],
            baseline_label=LABEL[base],
            **kw,
        )

    checks = [
        check("wn-init", "none", "steps_to_target", margin=p["eval_every"]),
        check("wn-init", "none", "test_acc", margin=0.01),
        Check(
            f"weight norm + data init reaches {target} in not many more steps than batch norm "
            f"(at most {p['like_bn_margin']} more)",
            "steps_to_target",
            V(recs, "steps_to_target", arm="wn-init"),
            V(recs, "steps_to_target", arm="bn"),
            direction="lower",
            kind="noninferior",
            margin=p["like_bn_margin"],
            primary=False,
            claimed_label=LABEL["wn-init"],
            baseline_label=LABEL["bn"],
        ),
        check("wn", "none", "steps_to_target", margin=p["eval_every"], primary=False),
    ]
    notes = [
        f"A run that never reaches {target} counts as {p['steps'] + p['eval_every']} steps. The "
        "'weight norm' arm uses the reparametrization alone (g = ‖v‖ at init, as torch's "
        "parametrization starts); '+ data init' adds the paper's data-dependent initialization "
        f"of g and b from {p['init_batch']} training samples."
    ]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.curves(
        a1,
        recs,
        x="step",
        y="test_acc_curve",
        label=lambda r: LABEL[r["arm"]],
        ylabel="test accuracy",
        title="test accuracy while training",
    )
    plots.bars(
        a2,
        recs,
        y="steps_to_target",
        label=lambda r: LABEL[r["arm"]],
        ylabel=f"steps to {p['target']:.0%} test accuracy",
        title="speed of convergence",
    )


def _params(steps: int, hidden: list[int]) -> dict[str, Any]:
    return {
        "hidden": hidden,
        "steps": steps,
        "eval_every": 10,
        "lr": 0.5,
        "batch": 32,
        "target": 0.9,
        "init_batch": 256,
        "like_bn_margin": 50,
    }


register(
    Experiment(
        id="weight-norm",
        title="Weight normalization speeds up training like batch norm",
        claim="Weight normalization (w = g·v/‖v‖) speeds up convergence like batch "
        "normalization, without depending on the batch.",
        source="Salimans & Kingma 2016 (arXiv:1602.07868; CIFAR-10 CNN, plain vs weight norm "
        "vs batch norm, data-dependent init)",
        quick=_params(250, [100, 100, 100]),
        full=_params(800, [100, 100, 100]),
        tiny=_params(20, [8]),
        describe=lambda p: (
            "Digits vectors; sigmoid MLP 64→"
            f"{'→'.join(map(str, p['hidden']))}→10 (LeCun init), plain, with every Linear "
            "weight-normalized (normkit.nn.weight_norm), the same with the paper's data-dependent "
            "init of g and b, or with BatchNorm1d before each sigmoid; SGD lr "
            f"{p['lr']}, batch {p['batch']}, {p['steps']} steps, test accuracy every "
            f"{p['eval_every']} steps. A sigmoid MLP on digits stands in for the paper's CIFAR-10 "
            "CNN (the sigmoid net is where plain training stalls, as in the lab's speed-accuracy "
            "experiment)."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
