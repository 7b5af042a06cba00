"""He et al. 2016: skip connections and BN let the depth grow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from normkit.examples.data import digits
from normkit.examples.models import ResidualNet, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

ARMS = {
    "plain": ("none", False),
    "bn": ("bn", False),
    "skip": ("none", True),
    "bn+skip": ("bn", True),
}


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "arm": a, "blocks": b} for a in ARMS for b in p["blocks"] for s in seeds]


def _run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "images" if p["arch"] == "cnn" else "vectors")
    torch.manual_seed(t["seed"])
    norm, skip = ARMS[t["arm"]]
    model = ResidualNet(t["blocks"], width=p["width"], norm=norm, skip=skip, arch=p["arch"])
    init_weights(model, scheme="he")
    spec = TrainSpec(steps=p["steps"], lr=p["lr"], momentum=0.9, batch_size=p["batch_size"])
    h = train(model, data, spec, seed=t["seed"])
    return {
        **t,
        "depth": 2 * t["blocks"] + 2,
        "test_acc": h.final_test_acc,
        "train_loss": h.final_train_loss,
        "diverged": h.diverged,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["arm", "depth"], ["test_acc", "train_loss"])
    lo, hi = min(p["blocks"]), max(p["blocks"])

    def drop(arm: str) -> list[float]:
        a = V(recs, "test_acc", arm=arm, blocks=hi)
        b = V(recs, "test_acc", arm=arm, blocks=lo)
        return [x - y for x, y in zip(a, b, strict=True)]

    d = 2 * hi + 2
    checks = [
        Check(
            f"At depth {d}, BN + skip beats the plain net",
            "test_acc",
            V(recs, "test_acc", arm="bn+skip", blocks=hi),
            V(recs, "test_acc", arm="plain", blocks=hi),
            margin=0.005,
            claimed_label="bn+skip",
            baseline_label="plain",
        ),
        Check(
            f"BN + skip loses less accuracy from depth {2 * lo + 2} to {d} than the plain net",
            "acc(deep) − acc(shallow)",
            drop("bn+skip"),
            drop("plain"),
            margin=0.005,
            claimed_label="bn+skip",
            baseline_label="plain",
        ),
        Check(
            f"At depth {d}, BN alone beats the plain net",
            "test_acc",
            V(recs, "test_acc", arm="bn", blocks=hi),
            V(recs, "test_acc", arm="plain", blocks=hi),
            margin=0.005,
            primary=False,
            claimed_label="bn",
            baseline_label="plain",
        ),
        Check(
            f"At depth {d}, skip alone beats the plain net",
            "test_acc",
            V(recs, "test_acc", arm="skip", blocks=hi),
            V(recs, "test_acc", arm="plain", blocks=hi),
            margin=0.005,
            primary=False,
            claimed_label="skip",
            baseline_label="plain",
        ),
        Check(
            f"At depth {d}, BN + skip beats skip alone",
            "test_acc",
            V(recs, "test_acc", arm="bn+skip", blocks=hi),
            V(recs, "test_acc", arm="skip", blocks=hi),
            margin=0.005,
            primary=False,
            claimed_label="bn+skip",
            baseline_label="skip",
        ),
    ]
    return Analysis(table, checks)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.lines(
        a1,
        recs,
        x="depth",
        y="test_acc",
        label=lambda r: r["arm"],
        xlabel="depth (weight layers)",
        ylabel="test accuracy",
        title="test accuracy vs depth",
    )
    plots.lines(
        a2,
        recs,
        x="depth",
        y="train_loss",
        label=lambda r: r["arm"],
        logy=True,
        xlabel="depth (weight layers)",
        ylabel="final training loss",
        title="training loss vs depth",
    )


register(
    Experiment(
        id="resnet",
        title="Skip connections + BN let depth grow",
        claim="Skip connections and batch normalization let ResNets be very deep.",
        source="He et al. 2016 (plain vs residual nets of growing depth, all with BN)",
        quick={
            "arch": "mlp",
            "width": 32,
            "blocks": [1, 3, 8],
            "steps": 250,
            "lr": 0.02,
            "batch_size": 64,
        },
        full={
            "arch": "mlp",
            "width": 32,
            "blocks": [1, 4, 10, 20],
            "steps": 1500,
            "lr": 0.02,
            "batch_size": 64,
        },
        tiny={
            "arch": "mlp",
            "width": 8,
            "blocks": [1, 2],
            "steps": 6,
            "lr": 0.02,
            "batch_size": 32,
        },
        describe=lambda p: (
            f"Digits {'images' if p['arch'] == 'cnn' else 'vectors'}. A stem layer, then "
            f"{p['blocks']} ResNet basic blocks (two {'3×3 conv' if p['arch'] == 'cnn' else 'Linear'}"
            f" layers of width {p['width']} each: relu(x + n(W₂ relu(n(W₁ x))))), then a linear "
            "head; depth = 2·blocks + 2 weight layers. Residual MLP blocks stand in for conv blocks "
            "to fit the CPU budget. Arms: plain (no norm, no skip), +BN, +skip, +both. He init, SGD "
            f"lr {p['lr']} momentum 0.9, batch {p['batch_size']}, {p['steps']} steps for every arm "
            "and depth."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
