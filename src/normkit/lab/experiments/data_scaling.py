"""Input-feature scaling (z-score, min-max, unit norm, none) on mixed-scale features, and
scaled vs unscaled regression targets, with the scalers of :mod:`normkit.data`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normkit.data import MinMaxScaler, Normalizer, StandardScaler, TargetScaler
from normkit.examples.data import Split, tabular
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

SCALERS = ("none", "z-score", "min-max", "unit-norm")
DATASETS = ("wine", "breast_cancer")


def _scale_x(data: Split, how: str) -> Split:
    """``data`` with features scaled by a scaler fitted on the training split only."""
    if how == "none":
        return data
    scaler = {"z-score": StandardScaler, "min-max": MinMaxScaler, "unit-norm": Normalizer}[how]()
    scaler.fit(data.x_train)
    return Split(
        scaler.transform(data.x_train),
        data.y_train,
        scaler.transform(data.x_test),
        data.y_test,
        data.num_classes,
    )


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    cls = [{"seed": s, "task": d, "arm": a} for d in DATASETS for a in SCALERS for s in seeds]
    reg = [{"seed": s, "task": "diabetes", "arm": a} for a in ("raw y", "scaled y") for s in seeds]
    return cls + reg


def _run_cls(p: Params, t: Record) -> Record:
    data = _scale_x(tabular(t["task"], t["seed"]), t["arm"])
    best: tuple[float, float, float] | None = None
    for lr in p["lrs"]:
        torch.manual_seed(t["seed"])
        model = _mlp(data.x_train.shape[1], p["hidden"], data.num_classes)
        spec = TrainSpec(steps=p["steps"], lr=lr, momentum=0.9, batch_size=p["batch_size"])
        h = train(model, data, spec, seed=t["seed"])
        cand = (h.final_train_loss, h.final_test_acc, lr)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return {**t, "train_loss": best[0], "test_acc": best[1], "lr": best[2]}


def _run_reg(p: Params, t: Record) -> Record:
    raw = tabular("diabetes", t["seed"])
    data = _scale_x(raw, "z-score")  # features z-scored in both arms: only the target differs
    ts = TargetScaler().fit(data.y_train) if t["arm"] == "scaled y" else None
    y_train = ts.transform(data.y_train) if ts is not None else data.y_train
    fit = Split(data.x_train, y_train, data.x_test, data.y_test, 0)

    def mse(out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out.squeeze(1), y)

    best: tuple[float, float, float] | None = None
    for lr in p["lrs"]:
        torch.manual_seed(t["seed"])
        model = _mlp(data.x_train.shape[1], p["hidden"], 1)
        spec = TrainSpec(steps=p["steps"], lr=lr, momentum=0.9, batch_size=p["batch_size"])
        h = train(model, fit, spec, seed=t["seed"], loss_fn=mse)
        with torch.no_grad():
            pred_tr, pred_te = model(data.x_train).squeeze(1), model(data.x_test).squeeze(1)
        if ts is not None:
            pred_tr, pred_te = ts.inverse_transform(pred_tr), ts.inverse_transform(pred_te)
        tr = math.sqrt(F.mse_loss(pred_tr, data.y_train).item()) if not h.diverged else math.inf
        te = math.sqrt(F.mse_loss(pred_te, data.y_test).item()) if not h.diverged else math.inf
        if not math.isfinite(tr) or not math.isfinite(te):
            tr = te = float(data.y_test.std() * 1e3)  # a diverged run: a huge, finite error
        if best is None or tr < best[0]:
            best = (tr, te, lr)
    assert best is not None
    return {**t, "train_rmse": best[0], "test_rmse": best[1], "lr": best[2]}


def _run(p: Params, t: Record) -> Record:
    return _run_reg(p, t) if t["task"] == "diabetes" else _run_cls(p, t)


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    cls = [r for r in recs if r["task"] != "diabetes"]
    reg = [r for r in recs if r["task"] == "diabetes"]
    table = aggregate(cls, ["task", "arm"], ["test_acc", "train_loss", "lr"])
    table += aggregate(reg, ["task", "arm"], ["test_rmse", "train_rmse", "lr"])
    checks = []
    for d in DATASETS:
        for arm in ("z-score", "min-max"):
            checks.append(
                Check(
                    f"{d}: {arm} features beat unscaled ones",
                    "test_acc",
                    V(cls, "test_acc", task=d, arm=arm),
                    V(cls, "test_acc", task=d, arm="none"),
                    margin=0.005,
                    claimed_label=arm,
                    baseline_label="none",
                )
            )
        checks.append(
            Check(
                f"{d}: z-score beats per-sample unit norm",
                "test_acc",
                V(cls, "test_acc", task=d, arm="z-score"),
                V(cls, "test_acc", task=d, arm="unit-norm"),
                margin=0.005,
                primary=False,
                claimed_label="z-score",
                baseline_label="unit-norm",
            )
        )
    checks.append(
        Check(
            f"diabetes: unscaled targets do as well as scaled ones (test RMSE at most "
            f"{p['rmse_margin']:g} higher)",
            "test_rmse",
            V(reg, "test_rmse", arm="raw y"),
            V(reg, "test_rmse", arm="scaled y"),
            direction="lower",
            kind="noninferior",
            margin=p["rmse_margin"],
            claimed_label="raw y",
            baseline_label="scaled y",
        )
    )
    notes = [
        f"Each arm gets its own best learning rate from {p['lrs']}, picked by the final "
        "training loss (never by test data), so unscaled inputs are not handicapped by an lr "
        "tuned for scaled ones."
    ]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 3)
    for ax, d in zip(axes[:2], DATASETS, strict=True):
        rs = [r for r in recs if r["task"] == d]
        plots.bars(
            ax,
            rs,
            y="test_acc",
            label=lambda r: r["arm"],
            title=f"{d}: test accuracy",
            ylabel="accuracy",
        )
    plots.bars(
        axes[2],
        [r for r in recs if r["task"] == "diabetes"],
        y="test_rmse",
        label=lambda r: r["arm"],
        title="diabetes regression: test RMSE",
        ylabel="RMSE (original units)",
    )


register(
    Experiment(
        id="data-scaling",
        title="Scaling input features, and scaling regression targets",
        claim="Normalizing input features brings columns to a common scale and helps training; for "
        "regression you don't normally normalize the outputs.",
        source="Common practice (the seed's wording); scikit-learn preprocessing guide",
        quick={
            "hidden": 32,
            "steps": 300,
            "batch_size": 32,
            "lrs": [0.001, 0.01, 0.1],
            "rmse_margin": 1.0,
        },
        full={
            "hidden": 32,
            "steps": 1500,
            "batch_size": 32,
            "lrs": [0.0001, 0.001, 0.01, 0.1],
            "rmse_margin": 1.0,
        },
        tiny={"hidden": 4, "steps": 4, "batch_size": 16, "lrs": [0.01, 0.1], "rmse_margin": 1.0},
        describe=lambda p: (
            "Wine (13 features, proline in the hundreds to thousands next to ratios below 1) and "
            "breast cancer (30 features, areas in the thousands next to fractions): a "
            f"{p['hidden']}-unit ReLU MLP trained on raw features or after normkit.data "
            "StandardScaler (z-score), MinMaxScaler or Normalizer (each sample to unit L2 norm), "
            "fitted on the training split. Diabetes regression (raw features z-scored, raw target "
            "25…346): MSE on the raw target vs on a TargetScaler-standardized target, RMSE in "
            f"original units. SGD momentum 0.9, batch {p['batch_size']}, {p['steps']} steps."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
