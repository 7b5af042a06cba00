"""At inference BN is a linear map: fold it into the preceding layer
(:func:`normkit.inference.fold_batchnorm`) and measure exactness and speed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from normkit.examples.data import digits
from normkit.examples.models import CNN, MLP, init_weights
from normkit.inference import fold_batchnorm
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

MODELS = ("mlp", "cnn")


def _median_time(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "model": m} for m in MODELS for s in seeds]


def _run(p: Params, t: Record) -> Record:
    is_mlp = t["model"] == "mlp"
    data = digits(t["seed"], "vectors" if is_mlp else "images")
    torch.manual_seed(t["seed"])
    if is_mlp:
        model: nn.Module = MLP(64, tuple(p["hidden"]), 10, norm="bn", act="relu")
    else:
        model = CNN(p["cnn_channels"], norm="bn")
    init_weights(model, scheme="he")
    train(model, data, TrainSpec(steps=p["steps"], lr=p["lr"], batch_size=64), seed=t["seed"])
    model.eval()
    folded, report = fold_batchnorm(model, return_report=True)
    x = data.x_test
    with torch.no_grad():
        ref = model.double()(x.double())
        y32 = folded(x)
        model.float()
        y_ref32 = model(x)
    scale = ref.abs().max().item()
    err_fold = (y32.double() - ref).abs().max().item() / scale
    err_bn = (y_ref32.double() - ref).abs().max().item() / scale
    t_bn = _median_time(model, x, p["reps"])
    t_fold = _median_time(folded, x, p["reps"])
    return {
        **t,
        "folded_norms": len(report.folded),
        "kept_norms": len(report.skipped),
        "rel_err_folded": err_fold,
        "rel_err_unfolded": err_bn,
        "ms_bn": 1e3 * t_bn,
        "ms_folded": 1e3 * t_fold,
        "speedup": t_bn / t_fold,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(
        recs,
        ["model"],
        ["rel_err_folded", "rel_err_unfolded", "ms_bn", "ms_folded", "speedup", "folded_norms"],
    )
    checks = []
    for m in MODELS:
        err = V(recs, "rel_err_folded", model=m)
        checks.append(
            Check(
                f"{m.upper()}: the folded model matches eval-mode BN (max error / max |logit| below "
                f"{p['tolerance']:g}, vs a float64 run of the unfolded model)",
                "rel_err_folded",
                err,
                [p["tolerance"]] * len(err),
                direction="lower",
                claimed_label="folded",
                baseline_label="tolerance",
            )
        )
        checks.append(
            Check(
                f"{m.upper()}: the folded model runs faster (eval forward of the test set)",
                "ms",
                V(recs, "ms_folded", model=m),
                V(recs, "ms_bn", model=m),
                direction="lower",
                claimed_label="folded",
                baseline_label="with BN",
            )
        )
        checks.append(
            Check(
                f"{m.upper()}: folding costs no more accuracy than float32 itself (error of the "
                "folded vs the unfolded float32 model, both against float64)",
                "rel_err",
                err,
                V(recs, "rel_err_unfolded", model=m),
                direction="lower",
                kind="noninferior",
                margin=p["tolerance"],
                primary=False,
                claimed_label="folded",
                baseline_label="unfolded",
            )
        )
    notes = [
        "Timings are medians of repeated eval forwards in one process (1 thread); the "
        "machine may be shared, so only the ratio within a run means anything."
    ]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    rows = [
        {**r, "arm": f"{r['model']} {arm}", "ms": r[k], "seed": r["seed"]}
        for r in recs
        for arm, k in (("BN", "ms_bn"), ("folded", "ms_folded"))
    ]
    plots.bars(
        a1,
        rows,
        y="ms",
        label=lambda r: r["arm"],
        title="eval forward of the test set",
        ylabel="ms (median)",
    )
    errs = [
        {**r, "arm": f"{r['model']} {arm}", "err": max(r[k], 1e-12)}
        for r in recs
        for arm, k in (("unfolded", "rel_err_unfolded"), ("folded", "rel_err_folded"))
    ]
    plots.bars(
        a2,
        errs,
        y="err",
        label=lambda r: r["arm"],
        title="max |error| / max |logit| vs float64",
        ylabel="relative error",
    )
    a2.set_yscale("log")


register(
    Experiment(
        id="inference-fold",
        title="BN at inference is a linear map",
        claim="At inference batch normalization acts as a simple linear transformation that can be "
        "folded into the preceding layer.",
        source="Ioffe & Szegedy 2015 (§3.1)",
        quick={
            "hidden": [256, 256, 256],
            "cnn_channels": 16,
            "steps": 100,
            "lr": 0.1,
            "reps": 30,
            "tolerance": 1e-5,
        },
        full={
            "hidden": [256, 256, 256],
            "cnn_channels": 16,
            "steps": 500,
            "lr": 0.1,
            "reps": 100,
            "tolerance": 1e-5,
        },
        tiny={
            "hidden": [16],
            "cnn_channels": 2,
            "steps": 4,
            "lr": 0.1,
            "reps": 3,
            "tolerance": 1e-5,
        },
        describe=lambda p: (
            f"A ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10 and the two-layer CNN "
            f"({p['cnn_channels']}/{2 * p['cnn_channels']} channels), both with normkit BN, trained "
            f"{p['steps']} SGD steps on digits, then put in eval mode and folded with "
            "normkit.inference.fold_batchnorm. Exactness: max |logit error| over the test set "
            "relative to max |logit|, against a float64 run of the unfolded model. Speed: median of "
            f"{p['reps']} eval forwards of the whole test set (599 samples), 1 thread."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
