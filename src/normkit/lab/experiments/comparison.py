"""LayerNorm vs BatchNorm on the same MLP, CNN and RNN; LayerNorm without gain and bias."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from normkit.examples.data import digits
from normkit.examples.models import CNN, MLP, ElmanRNN, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

NORMS = ("bn", "ln", "ln-simple")
FORM = {"mlp": "vectors", "cnn": "images", "rnn": "sequence"}


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "model": m, "norm": n} for m in FORM for n in NORMS for s in seeds]


def _run(p: Params, t: Record) -> Record:
    m = t["model"]
    data = digits(t["seed"], FORM[m])  # type: ignore[arg-type]
    torch.manual_seed(t["seed"])
    if m == "mlp":
        model: Any = MLP(64, tuple(p["hidden"]), 10, norm=t["norm"], act="relu")
    elif m == "cnn":
        model = CNN(p["cnn_channels"], norm=t["norm"])
    else:
        model = ElmanRNN(8, p["rnn_hidden"], 10, norm=t["norm"])
    init_weights(model, scheme="lecun" if m == "rnn" else "he")
    spec = TrainSpec(
        steps=p["steps"][m],
        lr=p["lr"],
        momentum=0.9,
        batch_size=p["batch_size"],
        eval_every=p["eval_every"],
    )
    h = train(model, data, spec, seed=t["seed"])
    return {
        **t,
        "test_acc": h.final_test_acc,
        "train_loss": h.final_train_loss,
        "curve_steps": h.steps,
        "curve_test_acc": h.test_acc,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["model", "norm"], ["test_acc", "train_loss"])

    def acc(m: str, n: str) -> list[float]:
        return V(recs, "test_acc", model=m, norm=n)

    checks = [
        Check(
            "CNN: BN beats LN",
            "test_acc",
            acc("cnn", "bn"),
            acc("cnn", "ln"),
            margin=0.005,
            claimed_label="bn",
            baseline_label="ln",
        ),
        Check(
            "RNN: LN beats BN",
            "test_acc",
            acc("rnn", "ln"),
            acc("rnn", "bn"),
            margin=0.005,
            claimed_label="ln",
            baseline_label="bn",
        ),
    ]
    for m in FORM:
        checks.append(
            Check(
                f"{m.upper()}: LN without gain and bias beats LN (Xu et al. 2019)",
                "test_acc",
                acc(m, "ln-simple"),
                acc(m, "ln"),
                margin=0.005,
                claimed_label="ln-simple",
                baseline_label="ln",
            )
        )
    checks.append(
        Check(
            "MLP: BN beats LN",
            "test_acc",
            acc("mlp", "bn"),
            acc("mlp", "ln"),
            margin=0.005,
            primary=False,
            claimed_label="bn",
            baseline_label="ln",
        )
    )
    return Analysis(table, checks)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 3)
    for ax, m in zip(axes, FORM, strict=True):
        plots.curves(
            ax,
            [r for r in recs if r["model"] == m],
            x="curve_steps",
            y="curve_test_acc",
            label=lambda r: r["norm"],
            title=f"{m.upper()} ({FORM[m]}): test accuracy",
            ylabel="test accuracy",
        )


register(
    Experiment(
        id="ln-vs-bn",
        title="LayerNorm vs BatchNorm, and LayerNorm without affine parameters",
        claim="BN suits CNNs and LN suits RNNs; LN works as well or better without its gain and "
        "bias (Xu et al. 2019).",
        source="Ba et al. 2016 (LN for RNNs); Xu et al. 2019 (LayerNorm-simple)",
        quick={
            "hidden": [64, 64, 64],
            "cnn_channels": 8,
            "rnn_hidden": 64,
            "steps": {"mlp": 300, "cnn": 200, "rnn": 300},
            "lr": 0.02,
            "batch_size": 64,
            "eval_every": 50,
        },
        full={
            "hidden": [64, 64, 64],
            "cnn_channels": 8,
            "rnn_hidden": 64,
            "steps": {"mlp": 1500, "cnn": 1000, "rnn": 1500},
            "lr": 0.02,
            "batch_size": 64,
            "eval_every": 100,
        },
        tiny={
            "hidden": [16],
            "cnn_channels": 2,
            "rnn_hidden": 8,
            "steps": {"mlp": 6, "cnn": 4, "rnn": 6},
            "lr": 0.02,
            "batch_size": 32,
            "eval_every": 3,
        },
        describe=lambda p: (
            f"Digits as vectors (ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10), as images (the "
            f"two-layer CNN, {p['cnn_channels']}/{2 * p['cnn_channels']} channels) and as 8-step "
            f"sequences of 8-pixel rows (Elman RNN, {p['rnn_hidden']} units, norm on the recurrent "
            "pre-activation at every step; BN shares its statistics across steps). LN on conv maps "
            "is GroupNorm with one group (LN over C×H×W, per-channel affine). ln-simple = LN without "
            f"gain and bias. SGD lr {p['lr']} momentum 0.9, batch {p['batch_size']}, steps "
            f"{p['steps']}."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
