"""Wu & He 2018 / Ioffe 2017: what happens to BN as the batch shrinks, and the alternatives
(Ghost BN, Batch Renorm, GroupNorm, LayerNorm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from normkit.examples.data import digits
from normkit.examples.models import MLP, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

NORMS = ("bn", "ghost", "renorm", "gn", "ln")
LABEL = {
    "bn": "BatchNorm",
    "ghost": "GhostBN",
    "renorm": "BatchRenorm",
    "gn": "GroupNorm",
    "ln": "LayerNorm",
}


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "norm": n, "batch": b} for n in NORMS for b in p["batches"] for s in seeds]


def _run(p: Params, t: Record) -> Record:
    b = t["batch"]
    data = digits(t["seed"], "vectors", n_train=p["n_train"])
    steps = max(1, p["epochs"] * data.n_train // b)
    torch.manual_seed(t["seed"])
    kw: dict[str, Any] = {}
    norm: str = t["norm"]
    name = {"ghost": "gbn1d", "renorm": "brn1d"}.get(norm, norm)
    if t["norm"] == "ghost":
        kw = {"virtual_batch_size": min(p["ghost_vbs"], b)}
    elif t["norm"] == "renorm":
        warm = max(1, int(p["renorm_warmup"] * steps))
        kw = {"r_max": p["r_max"], "d_max": p["d_max"], "warmup_steps": warm}
    model = MLP(64, tuple(p["hidden"]), 10, norm=name, act="relu", norm_kwargs=kw)
    init_weights(model, scheme="he")
    spec = TrainSpec(steps=steps, lr=p["lr"] * b / p["ref_batch"], momentum=0.9, batch_size=b)
    h = train(model, data, spec, seed=t["seed"])
    return {
        **t,
        "test_acc": h.final_test_acc,
        "train_acc": h.final_train_acc,
        "steps": steps,
        "diverged": h.diverged,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["norm", "batch"], ["test_acc", "train_acc"])
    lo, hi = min(p["batches"]), max(p["batches"])

    def acc(n: str, b: int) -> list[float]:
        return V(recs, "test_acc", norm=n, batch=b)

    checks = [
        Check(
            f"BN at batch {lo} is not worse than BN at batch {hi} (by more than "
            f"{p['margin'] * 100:g} points)",
            "test_acc",
            acc("bn", lo),
            acc("bn", hi),
            kind="noninferior",
            margin=p["margin"],
            claimed_label=f"bn@{lo}",
            baseline_label=f"bn@{hi}",
        ),
        Check(
            f"BN at batch {lo} is not worse than GroupNorm at batch {lo} (by more than "
            f"{p['margin'] * 100:g} points)",
            "test_acc",
            acc("bn", lo),
            acc("gn", lo),
            kind="noninferior",
            margin=p["margin"],
            claimed_label=f"bn@{lo}",
            baseline_label=f"gn@{lo}",
        ),
    ]
    for n in ("renorm", "gn", "ln"):
        checks.append(
            Check(
                f"{LABEL[n]} beats BN at batch {lo}",
                "test_acc",
                acc(n, lo),
                acc("bn", lo),
                margin=0.005,
                primary=False,
                claimed_label=f"{n}@{lo}",
                baseline_label=f"bn@{lo}",
            )
        )
    checks.append(
        Check(
            f"BN beats GroupNorm at batch {hi}",
            "test_acc",
            acc("bn", hi),
            acc("gn", hi),
            margin=0.005,
            primary=False,
            claimed_label=f"bn@{hi}",
            baseline_label=f"gn@{hi}",
        )
    )
    notes = [
        f"GhostBN uses virtual batches of min({p['ghost_vbs']}, batch): identical to BN at "
        f"batch ≤ {p['ghost_vbs']}, small-batch statistics with large-batch gradients above."
    ]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.lines(
        a1,
        recs,
        x="batch",
        y="test_acc",
        label=lambda r: LABEL[r["norm"]],
        logx=True,
        xlabel="batch size",
        ylabel="test accuracy (eval mode)",
        title="test accuracy vs batch size",
    )
    a1.set_xticks(p["batches"], [str(b) for b in p["batches"]])
    a1.minorticks_off()
    plots.lines(
        a2,
        recs,
        x="batch",
        y="train_acc",
        label=lambda r: LABEL[r["norm"]],
        logx=True,
        xlabel="batch size",
        ylabel="train accuracy (eval mode)",
        title="train accuracy vs batch size",
    )
    a2.set_xticks(p["batches"], [str(b) for b in p["batches"]])
    a2.minorticks_off()


register(
    Experiment(
        id="small-batch",
        title="BN at small batch sizes, and the alternatives",
        claim="Batch normalization works even for the smallest batch size.",
        source="Wu & He 2018 (ResNet-50 on ImageNet: BN error rises from 32 to 2 images per device, "
        "GN stays flat); Ioffe 2017 (Batch Renorm); Hoffer et al. 2017 (Ghost BN)",
        quick={
            "hidden": [64, 64],
            "batches": [2, 4, 8, 32],
            "n_train": 400,
            "epochs": 3,
            "lr": 0.05,
            "ref_batch": 32,
            "ghost_vbs": 4,
            "r_max": 3.0,
            "d_max": 5.0,
            "renorm_warmup": 0.2,
            "margin": 0.02,
        },
        full={
            "hidden": [64, 64],
            "batches": [2, 4, 8, 32],
            "n_train": 1198,
            "epochs": 5,
            "lr": 0.05,
            "ref_batch": 32,
            "ghost_vbs": 4,
            "r_max": 3.0,
            "d_max": 5.0,
            "renorm_warmup": 0.2,
            "margin": 0.02,
        },
        tiny={
            "hidden": [8],
            "batches": [2, 8],
            "n_train": 16,
            "epochs": 1,
            "lr": 0.05,
            "ref_batch": 32,
            "ghost_vbs": 4,
            "r_max": 3.0,
            "d_max": 5.0,
            "renorm_warmup": 0.2,
            "margin": 0.02,
        },
        describe=lambda p: (
            f"Digits vectors ({p['n_train']} training samples); ReLU MLP "
            f"64→{'→'.join(map(str, p['hidden']))}→10 with the norm before each ReLU: normkit "
            "BatchNorm1d, GhostBatchNorm1d, BatchRenorm1d (r_max "
            f"{p['r_max']}, d_max {p['d_max']}, relaxed from plain BN over the first "
            f"{p['renorm_warmup']:.0%} of steps, as the paper's 5k-step warm-up scaled down), "
            "GroupNorm (8 groups) or LayerNorm. Same schedule for every batch size: "
            f"{p['epochs']} epochs, SGD momentum 0.9, lr {p['lr']} × batch/{p['ref_batch']} (linear "
            "scaling, Goyal et al. 2017). Evaluated in eval mode (BN uses its running statistics). "
            "An MLP stands in for ResNet-50 to fit the CPU budget."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
