"""Wu & Johnson 2021 / Izmailov et al. 2018: BN's running averages lag behind the weights;
population statistics recomputed with the current weights (``recalibrate_batchnorm``) fix it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normkit.examples.data import Split, digits
from normkit.examples.models import CNN, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, evaluate, train
from normkit.lab.verdict import Check
from normkit.nn import recalibrate_batchnorm


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "momentum": m} for m in p["momenta"] for s in seeds]


def _recalibrated(model: nn.Module, data: Split, batch: int) -> nn.Module:
    c = copy.deepcopy(model)
    recalibrate_batchnorm(c, data.x_train.split(batch), progress=False)
    return c


def _train_mode_acc(model: nn.Module, data: Split, batch: int) -> float:
    """Test accuracy with each test batch normalized by its own statistics (train-mode BN)."""
    c = copy.deepcopy(model).train()
    hits = 0
    with torch.no_grad():
        for xb, yb in zip(data.x_test.split(batch), data.y_test.split(batch), strict=True):
            hits += int((c(xb).argmax(1) == yb).sum())
    return hits / data.y_test.numel()


def _run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "images")
    torch.manual_seed(t["seed"])
    model = CNN(p["channels"], norm="bn")
    init_weights(model, scheme="he")
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.momentum = t["momentum"]
    swa = torch.optim.swa_utils.AveragedModel(model)
    start_swa = int(p["steps"] * (1 - p["swa_fraction"]))
    b = p["batch"]
    curve: dict[str, list[float]] = {"step": [], "ema": [], "recal": [], "train_mode": []}

    def on_eval(step: int, m: nn.Module) -> None:
        if step == 0:
            return
        curve["step"].append(step)
        curve["ema"].append(evaluate(m, data.x_test, data.y_test)[0])
        curve["recal"].append(evaluate(_recalibrated(m, data, b), data.x_test, data.y_test)[0])
        curve["train_mode"].append(_train_mode_acc(m, data, b))

    def on_step(step: int, m: nn.Module, xb: Any, yb: Any) -> None:
        if step > start_swa:
            swa.update_parameters(m)

    spec = TrainSpec(
        steps=p["steps"], lr=p["lr"], momentum=0.9, batch_size=b, eval_every=p["eval_every"]
    )
    train(model, data, spec, seed=t["seed"], on_eval=on_eval, on_step=on_step)
    # SWA weights with the last model's running averages (AveragedModel keeps its buffers in
    # sync with the model it averages) against the same weights recalibrated
    averaged = copy.deepcopy(swa.module)
    averaged.load_state_dict(
        {**averaged.state_dict(), **{k: v for k, v in model.state_dict().items() if "running" in k}}
    )
    gaps = [r - e for r, e in zip(curve["recal"], curve["ema"], strict=True)]
    return {
        **t,
        **curve,
        "gap": gaps,
        "mean_ema": sum(curve["ema"]) / len(gaps),
        "mean_recal": sum(curve["recal"]) / len(gaps),
        "final_ema": curve["ema"][-1],
        "final_recal": curve["recal"][-1],
        "final_train_mode": curve["train_mode"][-1],
        "swa_stale": evaluate(averaged, data.x_test, data.y_test)[0],
        "swa_recal": evaluate(_recalibrated(averaged, data, b), data.x_test, data.y_test)[0],
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    metrics = ["mean_ema", "mean_recal", "final_ema", "final_recal", "final_train_mode"]
    table = aggregate(recs, ["momentum"], [*metrics, "swa_stale", "swa_recal"])
    slow, fast = min(p["momenta"]), max(p["momenta"])
    checks = [
        Check(
            f"with BN momentum {slow} (Keras' default 0.99), recalibrated statistics give a "
            "higher test accuracy than the running averages, averaged over training",
            "test_acc",
            V(recs, "mean_recal", momentum=slow),
            V(recs, "mean_ema", momentum=slow),
            margin=p["margin"],
            claimed_label="recalibrated",
            baseline_label="running averages",
        ),
        Check(
            "after weight averaging (SWA), recalibrated statistics beat the running averages "
            f"AveragedModel carries over from the model (BN momentum {fast})",
            "test_acc",
            V(recs, "swa_recal", momentum=fast),
            V(recs, "swa_stale", momentum=fast),
            margin=p["margin"],
            claimed_label="SWA + recalibrated",
            baseline_label="SWA + running averages",
        ),
        Check(
            f"with BN momentum {fast} (torch's default), recalibrated beat the running "
            "averages, averaged over training",
            "test_acc",
            V(recs, "mean_recal", momentum=fast),
            V(recs, "mean_ema", momentum=fast),
            margin=p["margin"],
            primary=False,
            claimed_label="recalibrated",
            baseline_label="running averages",
        ),
        Check(
            f"at the end of training (momentum {fast}), recalibrated statistics are not worse "
            "than the running averages",
            "test_acc",
            V(recs, "final_recal", momentum=fast),
            V(recs, "final_ema", momentum=fast),
            kind="noninferior",
            margin=p["margin"],
            primary=False,
            claimed_label="recalibrated",
            baseline_label="running averages",
        ),
    ]
    notes = [
        "Recalibration: normkit.nn.recalibrate_batchnorm over the training set in batches of "
        f"{p['batch']} (exact population statistics with the current weights). 'Train mode' "
        "normalizes each test batch with its own statistics.",
    ]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.curves(
        a1,
        recs,
        x="step",
        y="gap",
        label=lambda r: f"BN momentum {r['momentum']}",
        ylabel="test acc: recalibrated − running averages",
        title="the lag of the running averages during training",
    )
    rows = [
        {**r, "arm": arm, "acc": r[key]}
        for r in recs
        if r["momentum"] == max(p["momenta"])
        for arm, key in (
            ("running avg", "final_ema"),
            ("recalibrated", "final_recal"),
            ("train mode", "final_train_mode"),
            ("SWA + running avg", "swa_stale"),
            ("SWA + recalibrated", "swa_recal"),
        )
    ]
    plots.bars(
        a2,
        rows,
        y="acc",
        label=lambda r: r["arm"],
        ylabel="test accuracy",
        title=f"end of training, BN momentum {max(p['momenta'])}",
    )


def _params(steps: int, eval_every: int, channels: int) -> dict[str, Any]:
    return {
        "channels": channels,
        "steps": steps,
        "eval_every": eval_every,
        "lr": 0.3,
        "batch": 32,
        "momenta": [0.01, 0.1],
        "swa_fraction": 0.5,
        "margin": 0.01,
    }


register(
    Experiment(
        id="bn-lag",
        title="BN's running averages lag behind the weights",
        claim="Batch norm's running averages lag behind the weights: recomputing the "
        "population statistics with the current weights restores eval accuracy, most of all "
        "after weight averaging.",
        source="Wu & Johnson 2021 (Rethinking 'Batch' in BatchNorm: PreciseBN on ImageNet); "
        "Izmailov et al. 2018 (SWA recomputes BN statistics after averaging)",
        quick=_params(200, 20, 8),
        full=_params(600, 50, 8),
        tiny=_params(4, 2, 2),
        describe=lambda p: (
            f"Digits images; the lab's CNN ({p['channels']} channels, BatchNorm2d) trained "
            f"{p['steps']} steps with SGD (lr {p['lr']}, momentum 0.9, batch {p['batch']}), BN "
            f"momentum {' or '.join(map(str, p['momenta']))}. Every {p['eval_every']} steps the "
            "test accuracy is measured with the running averages, with statistics recalibrated "
            "on the training set (recalibrate_batchnorm) and in train mode. SWA: the weights "
            f"averaged over the last {p['swa_fraction']:.0%} of steps (torch's AveragedModel, "
            "whose buffers follow the trained model's running averages), evaluated as is and "
            "recalibrated. A 2-layer CNN on 8×8 digits stands in "
            "for ResNet-50 on ImageNet."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
