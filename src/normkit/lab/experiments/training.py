"""Claims about how BN changes training: speed and accuracy, initialization, learning rate,
regularization, and where the norm goes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from normkit.examples.data import digits
from normkit.examples.models import CNN, MLP, init_weights
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check

ARM = {"none": "no norm", "bn": "BatchNorm"}

# --------------------------------------------------------------------------- speed-accuracy


def _sa_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [
        {"seed": s, "model": m, "norm": n}
        for m in ("mlp", "cnn")
        for n in ("none", "bn")
        for s in seeds
    ]


def _sa_run(p: Params, t: Record) -> Record:
    seed, is_mlp = t["seed"], t["model"] == "mlp"
    data = digits(seed, "vectors" if is_mlp else "images")
    torch.manual_seed(seed)
    if is_mlp:
        model: Any = MLP(64, tuple(p["mlp_hidden"]), 10, norm=t["norm"], act="sigmoid")
        init_weights(model, scheme="lecun")
    else:
        model = CNN(p["cnn_channels"], norm=t["norm"])
        init_weights(model, scheme="he")
    steps = p["mlp_steps"] if is_mlp else p["cnn_steps"]
    spec = TrainSpec(
        steps=steps,
        lr=p["lr_mlp" if is_mlp else "lr_cnn"],
        batch_size=p["batch_size"],
        eval_every=p["eval_every"],
        target=p["target"],
    )
    probe = data.x_test[:256]
    pct: dict[str, list[float]] = {"p15": [], "p50": [], "p85": []}

    def on_eval(step: int, m: Any) -> None:
        if is_mlp:
            with torch.no_grad():
                m.eval()
                z = m.last_preactivation(probe)[:, 0]
                m.train()
            q = torch.quantile(z, torch.tensor([0.15, 0.5, 0.85])).tolist()
            for k, v in zip(pct, q, strict=True):
                pct[k].append(v)

    h = train(model, data, spec, seed=seed, on_eval=on_eval)
    reached = h.steps_to_target is not None
    return {
        **t,
        "final_test_acc": h.final_test_acc,
        "steps_to_target": h.steps_to_target if reached else steps + p["eval_every"],
        "reached_target": reached,
        "curve_steps": h.steps,
        "curve_test_acc": h.test_acc,
        **({f"sig_{k}": v for k, v in pct.items()} if is_mlp else {}),
    }


def _sa_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["model", "norm"], ["final_test_acc", "steps_to_target"])
    for row in table:
        row["reached_target"] = sum(
            r["reached_target"]
            for r in recs
            if r["model"] == row["model"] and r["norm"] == row["norm"]
        )
    checks = []
    for m in ("mlp", "cnn"):
        checks.append(
            Check(
                f"{m.upper()}: BN reaches {p['target']:.0%} test accuracy in fewer steps",
                "steps_to_target",
                V(recs, "steps_to_target", model=m, norm="bn"),
                V(recs, "steps_to_target", model=m, norm="none"),
                direction="lower",
                margin=p["eval_every"],
                claimed_label="bn",
                baseline_label="none",
            )
        )
        checks.append(
            Check(
                f"{m.upper()}: BN ends with a higher test accuracy",
                "final_test_acc",
                V(recs, "final_test_acc", model=m, norm="bn"),
                V(recs, "final_test_acc", model=m, norm="none"),
                margin=0.005,
                claimed_label="bn",
                baseline_label="none",
            )
        )
    notes = [
        "Runs that never reach the target are counted at budget + one evaluation interval "
        f"({p['mlp_steps'] + p['eval_every']} MLP / {p['cnn_steps'] + p['eval_every']} CNN steps); "
        "the table's reached_target column says how many seeds got there."
    ]
    return Analysis(table, checks, notes)


def _sa_plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 3)
    for ax, m in zip(axes[:2], ("mlp", "cnn"), strict=True):
        plots.curves(
            ax,
            [r for r in recs if r["model"] == m],
            x="curve_steps",
            y="curve_test_acc",
            label=lambda r: ARM[r["norm"]],
            title=f"{m.upper()} on digits: test accuracy",
            ylabel="test accuracy",
        )
        ax.axhline(p["target"], color="gray", ls=":", lw=1)
    ax = axes[2]
    mlp = [r for r in recs if r["model"] == "mlp"]
    for i, n in enumerate(("none", "bn")):
        rs = [r for r in mlp if r["norm"] == n][:1]
        for r in rs:
            for k, ls in (("sig_p15", ":"), ("sig_p50", "-"), ("sig_p85", ":")):
                ax.plot(
                    r["curve_steps"],
                    r[k],
                    ls,
                    color=("#1f77b4", "#d62728")[i],
                    label=f"{ARM[n]} {k[4:]}",
                )
    ax.set_title(
        "input of one sigmoid, last hidden layer\n(15/50/85th pct, first seed)", fontsize=9
    )
    ax.set_xlabel("step")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)


register(
    Experiment(
        id="speed-accuracy",
        title="BN speeds up training and improves accuracy",
        claim="Batch normalization improves training time and accuracy.",
        source="Ioffe & Szegedy 2015 (MNIST: 3×100 sigmoid MLP, small Gaussian init, test accuracy "
        "vs steps, percentiles of one sigmoid input)",
        quick={
            "mlp_hidden": [100, 100, 100],
            "cnn_channels": 8,
            "mlp_steps": 600,
            "cnn_steps": 300,
            "eval_every": 25,
            "batch_size": 60,
            "lr_mlp": 0.5,
            "lr_cnn": 0.05,
            "target": 0.9,
        },
        full={
            "mlp_hidden": [100, 100, 100],
            "cnn_channels": 8,
            "mlp_steps": 3000,
            "cnn_steps": 1500,
            "eval_every": 50,
            "batch_size": 60,
            "lr_mlp": 0.5,
            "lr_cnn": 0.05,
            "target": 0.9,
        },
        tiny={
            "mlp_hidden": [16, 16],
            "cnn_channels": 2,
            "mlp_steps": 12,
            "cnn_steps": 6,
            "eval_every": 3,
            "batch_size": 32,
            "lr_mlp": 0.5,
            "lr_cnn": 0.05,
            "target": 0.3,
        },
        describe=lambda p: (
            f"Digits (1198 train / 599 test, split by seed). MLP: 64→{'→'.join(map(str, p['mlp_hidden']))}"
            f"→10 sigmoid, LeCun-normal init, plain SGD lr {p['lr_mlp']}, batch {p['batch_size']}, "
            f"{p['mlp_steps']} steps (paper: MNIST, 50k steps). CNN: two 3×3 conv layers "
            f"({p['cnn_channels']}, {2 * p['cnn_channels']} channels, ReLU, He init), SGD lr "
            f"{p['lr_cnn']}, {p['cnn_steps']} steps. Same optimizer, lr and budget with and without "
            f"BN (normkit BatchNorm1d/2d between the layer and the nonlinearity). Steps to "
            f"{p['target']:.0%} test accuracy checked every {p['eval_every']} steps."
        ),
        tasks=_sa_tasks,
        run=_sa_run,
        analyze=_sa_analyze,
        plot=_sa_plot,
    )
)

# --------------------------------------------------------------------------- init


def _relu_mlp(p: Params, norm: str, **kw: Any) -> MLP:
    return MLP(64, tuple(p["hidden"]), 10, norm=norm, act="relu", **kw)


def _init_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [
        {"seed": s, "norm": n, "scale": sc}
        for n in ("none", "bn")
        for sc in p["scales"]
        for s in seeds
    ]


def _init_run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "vectors")
    torch.manual_seed(t["seed"])
    model = _relu_mlp(p, t["norm"])
    init_weights(model, scheme="he", scale=t["scale"])
    h = train(
        model,
        data,
        TrainSpec(steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"]),
        seed=t["seed"],
    )
    return {**t, "final_test_acc": h.final_test_acc, "diverged": h.diverged}


def _per_seed(
    recs: list[Record], norm: str, fn: Any, metric: str = "final_test_acc"
) -> list[float]:
    """``fn`` (e.g. min, max − min) over a sweep of ``metric``, one value per seed."""
    out = []
    for s in sorted({r["seed"] for r in recs}):
        out.append(fn([r[metric] for r in recs if r["seed"] == s and r["norm"] == norm]))
    return out


def _init_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["norm", "scale"], ["final_test_acc"])
    spread = {n: _per_seed(recs, n, lambda v: max(v) - min(v)) for n in ("none", "bn")}
    worst = {n: _per_seed(recs, n, min) for n in ("none", "bn")}
    checks = [
        Check(
            "BN's accuracy varies less across init scales (max − min over the sweep)",
            "acc_spread",
            spread["bn"],
            spread["none"],
            direction="lower",
            margin=0.01,
            claimed_label="bn",
            baseline_label="none",
        ),
        Check(
            "BN's worst accuracy over the sweep is higher",
            "worst_acc",
            worst["bn"],
            worst["none"],
            margin=0.01,
            claimed_label="bn",
            baseline_label="none",
        ),
    ]
    return Analysis(table, checks)


def _init_plot(p: Params, recs: list[Record], fig: Any) -> None:
    ax = fig.subplots(1, 1)
    plots.lines(
        ax,
        recs,
        x="scale",
        y="final_test_acc",
        label=lambda r: ARM[r["norm"]],
        logx=True,
        xlabel="init scale (× He std)",
        ylabel="test accuracy",
        title="test accuracy vs weight-init scale",
    )


register(
    Experiment(
        id="init",
        title="BN reduces sensitivity to weight initialization",
        claim="Batch normalization decreases the effect of weight initialization.",
        source="Ioffe & Szegedy 2015 (claim); protocol: init-scale sweep ×0.01…×10",
        quick={
            "hidden": [64, 64, 64],
            "scales": [0.01, 0.1, 1.0, 10.0],
            "steps": 300,
            "lr": 0.1,
            "batch_size": 64,
        },
        full={
            "hidden": [64, 64, 64],
            "scales": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            "steps": 1500,
            "lr": 0.1,
            "batch_size": 64,
        },
        tiny={"hidden": [16], "scales": [0.1, 1.0], "steps": 8, "lr": 0.1, "batch_size": 32},
        describe=lambda p: (
            f"Digits vectors; ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10; every weight drawn "
            f"from N(0, (s·√2)²/fan_in) for s in {p['scales']} (He init scaled by s); plain SGD lr "
            f"{p['lr']}, batch {p['batch_size']}, {p['steps']} steps; with and without BN before "
            "each ReLU. A diverged run is scored as it ends (non-finite outputs count as wrong)."
        ),
        tasks=_init_tasks,
        run=_init_run,
        analyze=_init_analyze,
        plot=_init_plot,
    )
)

# --------------------------------------------------------------------------- learning-rate


def _lr_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [
        {"seed": s, "norm": n, "lr": lr} for n in ("none", "bn") for lr in p["lrs"] for s in seeds
    ]


def _lr_run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "vectors")
    torch.manual_seed(t["seed"])
    model = _relu_mlp(p, t["norm"])
    init_weights(model, scheme="he")
    h = train(
        model,
        data,
        TrainSpec(steps=p["steps"], lr=t["lr"], batch_size=p["batch_size"]),
        seed=t["seed"],
    )
    stable = not h.diverged and h.final_train_loss < math.log(10)
    return {
        **t,
        "final_test_acc": h.final_test_acc,
        "final_train_loss": h.final_train_loss,
        "diverged": h.diverged,
        "stable": stable,
    }


def _lr_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["norm", "lr"], ["final_test_acc"])
    for row in table:
        row["stable_seeds"] = sum(
            r["stable"] for r in recs if r["norm"] == row["norm"] and r["lr"] == row["lr"]
        )
    lowest = math.log10(min(p["lrs"])) - 1

    def top(v: list[Record]) -> float:
        ok = [math.log10(r["lr"]) for r in v if r["stable"]]
        return max(ok) if ok else lowest

    seeds = sorted({r["seed"] for r in recs})
    hi = {
        n: [top([r for r in recs if r["seed"] == s and r["norm"] == n]) for s in seeds]
        for n in ("none", "bn")
    }
    best = {n: _per_seed(recs, n, max) for n in ("none", "bn")}
    checks = [
        Check(
            "BN trains stably at a higher learning rate (log10 of the highest stable lr)",
            "log10_max_stable_lr",
            hi["bn"],
            hi["none"],
            claimed_label="bn",
            baseline_label="none",
        ),
        Check(
            "BN's best test accuracy over the sweep is higher",
            "best_acc",
            best["bn"],
            best["none"],
            margin=0.005,
            primary=False,
            claimed_label="bn",
            baseline_label="none",
        ),
    ]
    notes = [
        "Stable = no non-finite loss and final training loss below ln 10 (the loss of a "
        f"uniform guess); no stable lr counts as log10 = {lowest:g}."
    ]
    return Analysis(table, checks, notes)


def _lr_plot(p: Params, recs: list[Record], fig: Any) -> None:
    ax = fig.subplots(1, 1)
    plots.lines(
        ax,
        recs,
        x="lr",
        y="final_test_acc",
        label=lambda r: ARM[r["norm"]],
        logx=True,
        xlabel="learning rate (SGD)",
        ylabel="test accuracy",
        title="test accuracy vs learning rate",
    )


register(
    Experiment(
        id="learning-rate",
        title="BN allows higher learning rates",
        claim="Batch normalization allows a higher learning rate.",
        source="Ioffe & Szegedy 2015 (ImageNet: lr ×5 and ×30 the baseline)",
        quick={
            "hidden": [64, 64, 64],
            "lrs": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            "steps": 300,
            "batch_size": 64,
        },
        full={
            "hidden": [64, 64, 64],
            "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
            "steps": 1500,
            "batch_size": 64,
        },
        tiny={"hidden": [16], "lrs": [0.1, 100.0], "steps": 8, "batch_size": 32},
        describe=lambda p: (
            f"Digits vectors; ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10, He init; plain SGD "
            f"at each lr in {p['lrs']}, batch {p['batch_size']}, {p['steps']} steps; with and "
            "without BN before each ReLU."
        ),
        tasks=_lr_tasks,
        run=_lr_run,
        analyze=_lr_analyze,
        plot=_lr_plot,
    )
)

# --------------------------------------------------------------------------- regularization

REG_ARMS = {
    "none": ("none", 0.0),
    "dropout": ("none", 0.5),
    "bn": ("bn", 0.0),
    "bn+dropout": ("bn", 0.5),
}


def _reg_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "arm": a} for a in REG_ARMS for s in seeds]


def _reg_run(p: Params, t: Record) -> Record:
    data = digits(t["seed"], "vectors", n_train=p["n_train"])
    torch.manual_seed(t["seed"])
    norm, drop = REG_ARMS[t["arm"]]
    model = MLP(64, tuple(p["hidden"]), 10, norm=norm, act="relu", dropout=drop)
    init_weights(model, scheme="he")
    spec = TrainSpec(steps=p["steps"], lr=p["lr"], momentum=0.9, batch_size=p["batch_size"])
    h = train(model, data, spec, seed=t["seed"])
    return {
        **t,
        "test_acc": h.final_test_acc,
        "train_acc": h.final_train_acc,
        "acc_gap": h.final_train_acc - h.final_test_acc,
        "loss_gap": h.final_test_loss - h.final_train_loss,
    }


def _reg_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["arm"], ["test_acc", "train_acc", "acc_gap", "loss_gap"])
    checks = [
        Check(
            "BN alone improves test accuracy over no regularization",
            "test_acc",
            V(recs, "test_acc", arm="bn"),
            V(recs, "test_acc", arm="none"),
            margin=0.005,
            claimed_label="bn",
            baseline_label="none",
        ),
        Check(
            "BN alone shrinks the generalization gap (test − train loss)",
            "loss_gap",
            V(recs, "loss_gap", arm="bn"),
            V(recs, "loss_gap", arm="none"),
            direction="lower",
            claimed_label="bn",
            baseline_label="none",
        ),
        Check(
            "BN can replace dropout: BN's test accuracy is not worse than dropout's by more "
            "than 1 point",
            "test_acc",
            V(recs, "test_acc", arm="bn"),
            V(recs, "test_acc", arm="dropout"),
            kind="noninferior",
            margin=0.01,
            claimed_label="bn",
            baseline_label="dropout",
        ),
        Check(
            "Adding dropout on top of BN helps",
            "test_acc",
            V(recs, "test_acc", arm="bn+dropout"),
            V(recs, "test_acc", arm="bn"),
            margin=0.005,
            primary=False,
            claimed_label="bn+dropout",
            baseline_label="bn",
        ),
    ]
    return Analysis(table, checks)


def _reg_plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.bars(
        a1, recs, y="test_acc", label=lambda r: r["arm"], title="test accuracy", ylabel="accuracy"
    )
    lo = min(r["test_acc"] for r in recs)
    a1.set_ylim(max(0.0, lo - 0.05), 1.0)
    plots.bars(
        a2,
        recs,
        y="loss_gap",
        label=lambda r: r["arm"],
        title="generalization gap (test − train loss)",
        ylabel="loss gap",
    )


register(
    Experiment(
        id="regularization",
        title="BN regularizes and can replace dropout",
        claim="Batch normalization has a regularizing effect, so you can often remove dropout.",
        source="Ioffe & Szegedy 2015 (dropout removed from BN-Inception)",
        quick={"hidden": [256, 256], "n_train": 300, "steps": 600, "lr": 0.02, "batch_size": 32},
        full={"hidden": [256, 256], "n_train": 300, "steps": 2000, "lr": 0.02, "batch_size": 32},
        tiny={"hidden": [16], "n_train": 60, "steps": 8, "lr": 0.02, "batch_size": 16},
        describe=lambda p: (
            f"Digits vectors, only {p['n_train']} training samples (to make overfitting visible); "
            f"ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10, He init; SGD lr {p['lr']} "
            f"momentum 0.9, batch {p['batch_size']}, {p['steps']} steps. Arms: none, dropout 0.5 "
            "after each ReLU, BN before each ReLU, both. No weight decay anywhere."
        ),
        tasks=_reg_tasks,
        run=_reg_run,
        analyze=_reg_analyze,
        plot=_reg_plot,
    )
)

# --------------------------------------------------------------------------- placement


def _pl_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [
        {"seed": s, "model": m, "placement": pl}
        for m in ("mlp", "cnn")
        for pl in ("pre", "post")
        for s in seeds
    ]


def _pl_run(p: Params, t: Record) -> Record:
    is_mlp = t["model"] == "mlp"
    data = digits(t["seed"], "vectors" if is_mlp else "images")
    torch.manual_seed(t["seed"])
    if is_mlp:
        model: Any = _relu_mlp(p, "bn", placement=t["placement"])
    else:
        model = CNN(p["cnn_channels"], norm="bn", placement=t["placement"])
    init_weights(model, scheme="he")
    spec = TrainSpec(
        steps=p["mlp_steps" if is_mlp else "cnn_steps"],
        lr=p["lr"],
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


def _pl_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["model", "placement"], ["test_acc", "train_loss"])
    checks = []
    for m in ("mlp", "cnn"):
        checks.append(
            Check(
                f"{m.upper()}: BN before the ReLU gives a higher test accuracy than after it",
                "test_acc",
                V(recs, "test_acc", model=m, placement="pre"),
                V(recs, "test_acc", model=m, placement="post"),
                margin=0.005,
                claimed_label="pre",
                baseline_label="post",
            )
        )
        checks.append(
            Check(
                f"{m.upper()}: BN before the ReLU reaches a lower training loss",
                "train_loss",
                V(recs, "train_loss", model=m, placement="pre"),
                V(recs, "train_loss", model=m, placement="post"),
                direction="lower",
                primary=False,
                claimed_label="pre",
                baseline_label="post",
            )
        )
    return Analysis(table, checks)


def _pl_plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 2)
    names = {"pre": "Linear/Conv → BN → ReLU", "post": "Linear/Conv → ReLU → BN"}
    for ax, m in zip(axes[:2], ("mlp", "cnn"), strict=True):
        plots.curves(
            ax,
            [r for r in recs if r["model"] == m],
            x="curve_steps",
            y="curve_test_acc",
            label=lambda r: names[r["placement"]],
            title=f"{m.upper()}: test accuracy",
            ylabel="test accuracy",
        )


register(
    Experiment(
        id="placement",
        title="Where the norm goes: before or after the nonlinearity",
        claim="Normalization layers go between the Linear/Conv layer and the nonlinearity.",
        source="Ioffe & Szegedy 2015 (BN on Wx + b, before the nonlinearity); common advice",
        quick={
            "hidden": [64, 64, 64],
            "cnn_channels": 8,
            "mlp_steps": 400,
            "cnn_steps": 250,
            "lr": 0.1,
            "batch_size": 64,
            "eval_every": 50,
        },
        full={
            "hidden": [64, 64, 64],
            "cnn_channels": 8,
            "mlp_steps": 2000,
            "cnn_steps": 1200,
            "lr": 0.1,
            "batch_size": 64,
            "eval_every": 100,
        },
        tiny={
            "hidden": [16],
            "cnn_channels": 2,
            "mlp_steps": 8,
            "cnn_steps": 4,
            "lr": 0.1,
            "batch_size": 32,
            "eval_every": 4,
        },
        describe=lambda p: (
            f"Digits. ReLU MLP 64→{'→'.join(map(str, p['hidden']))}→10 ({p['mlp_steps']} steps) and "
            f"the two-layer CNN ({p['cnn_channels']}/{2 * p['cnn_channels']} channels, "
            f"{p['cnn_steps']} steps), He init, plain SGD lr {p['lr']}, batch {p['batch_size']}. "
            "Arms: BN between the layer and the ReLU ('pre') or right after the ReLU ('post')."
        ),
        tasks=_pl_tasks,
        run=_pl_run,
        analyze=_pl_analyze,
        plot=_pl_plot,
    )
)
