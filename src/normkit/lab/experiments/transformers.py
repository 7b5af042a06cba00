"""Transformer norms at small scale: DyT vs LayerNorm (Zhu et al. 2025), QK-norm against the
attention-logit instability (Wortsman et al. 2023), Post-LN vs Pre-LN and warm-up (Xiong et al.
2020). One tiny transformer over the digits rows (8 tokens of 8 pixels), AdamW."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from normkit.examples.data import digits
from normkit.examples.models import TinyTransformer
from normkit.lab import plots
from normkit.lab.experiment import (
    Analysis,
    Experiment,
    Params,
    Record,
    aggregate,
    mean_std,
    register,
)
from normkit.lab.experiment import values as V
from normkit.lab.experiments._transformer import LOSS_CAP, TransformerRun, train_transformer
from normkit.lab.verdict import Check


def _model(p: Params, **kw: Any) -> TinyTransformer:
    return TinyTransformer(dim=p["dim"], heads=p["heads"], depth=p["depth"], **kw)


def _setup(p: Params) -> str:
    return (
        f"Digits as sequences of 8 rows (8 tokens of 8 pixels); a transformer of {p['depth']} "
        f"blocks, width {p['dim']}, {p['heads']} heads, MLP ×2, learned positions, mean-pooled "
        f"into a linear head; AdamW (no weight decay), batch {p['batch']}, {p['steps']} steps"
    )


# --------------------------------------------------------------------------- dyt

DYT_ARMS = ("ln", "dyt")
DYT_LABEL = {"ln": "LayerNorm", "dyt": "DyT"}


def _dyt_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "arm": a} for a in DYT_ARMS for s in seeds]


def _dyt_run(p: Params, t: Record) -> Record:
    torch.manual_seed(t["seed"])
    model = _model(p, norm=t["arm"])
    run = TransformerRun(
        p["steps"], p["lr"], p["batch"], warmup=p["warmup"], eval_every=p["eval_every"]
    )
    return {**t, **train_transformer(model, digits(t["seed"], "sequence"), run, t["seed"])}


def _dyt_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["arm"], ["test_acc", "final_loss"])
    checks = [
        Check(
            f"DyT's test accuracy is not worse than LayerNorm's by more than {p['margin']:.0%}",
            "test_acc",
            V(recs, "test_acc", arm="dyt"),
            V(recs, "test_acc", arm="ln"),
            kind="noninferior",
            margin=p["margin"],
            claimed_label="DyT",
            baseline_label="LayerNorm",
        ),
        Check(
            "DyT's final training loss is not higher than LayerNorm's by more than "
            f"{p['loss_margin']}",
            "final_loss",
            V(recs, "final_loss", arm="dyt"),
            V(recs, "final_loss", arm="ln"),
            direction="lower",
            kind="noninferior",
            margin=p["loss_margin"],
            primary=False,
            claimed_label="DyT",
            baseline_label="LayerNorm",
        ),
    ]
    notes = [
        "Every LayerNorm of the Pre-LN transformer (two per block and the final one) is a DyT "
        "with α initialised to 0.5 and γ = 1, β = 0; nothing else changes (the paper's recipe). "
        "The claim is 'not worse', so it is tested for non-inferiority with the margin above."
    ]
    return Analysis(table, checks, notes)


def _dyt_plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    label = lambda r: DYT_LABEL[r["arm"]]  # noqa: E731
    plots.curves(
        a1,
        recs,
        x="step",
        y="test_acc_curve",
        label=label,
        ylabel="test accuracy",
        title="test accuracy while training",
    )
    plots.bars(a2, recs, y="test_acc", label=label, ylabel="final test accuracy", title="end")


def _dyt_params(steps: int, depth: int) -> dict[str, Any]:
    return {
        "dim": 32,
        "heads": 2,
        "depth": depth,
        "steps": steps,
        "lr": 3e-3,
        "batch": 64,
        "warmup": steps // 10,
        "eval_every": max(1, steps // 10),
        "margin": 0.02,
        "loss_margin": 0.05,
    }


register(
    Experiment(
        id="dyt",
        title="DyT matches LayerNorm in transformers",
        claim="Replacing every LayerNorm of a transformer by Dynamic Tanh, γ·tanh(αx) + β, "
        "gives the same quality without any normalization statistics.",
        source="Zhu, Chen, He, LeCun & Liu 2025 (arXiv:2503.10622; ViT/ConvNeXt on ImageNet, "
        "DiT, LLaMA, each LN swapped for DyT with α₀ = 0.5, same recipe)",
        quick=_dyt_params(200, 2),
        full=_dyt_params(1500, 4),
        tiny=_dyt_params(4, 1),
        describe=lambda p: (
            f"{_setup(p)} (lr {p['lr']}, {p['warmup']} warm-up steps), Pre-LN; LayerNorm vs DyT "
            "in every norm position. Scaled down from ImageNet-scale ViTs to a 2-block "
            "transformer on 1.2k digits; the comparison (swap the norm, keep the recipe) is the "
            "paper's."
        ),
        tasks=_dyt_tasks,
        run=_dyt_run,
        analyze=_dyt_analyze,
        plot=_dyt_plot,
    )
)

# --------------------------------------------------------------------------- qk-norm

QK_ARMS = ("none", "qk-ln")
QK_LABEL = {"none": "no QK-norm", "qk-ln": "QK-layernorm"}


def _qk_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "arm": a, "lr": lr} for a in QK_ARMS for lr in p["lrs"] for s in seeds]


def _qk_run(p: Params, t: Record) -> Record:
    torch.manual_seed(t["seed"])
    model = _model(p, qk_norm="layer" if t["arm"] == "qk-ln" else None)
    run = TransformerRun(p["steps"], t["lr"], p["batch"], warmup=p["warmup"])
    return {**t, **train_transformer(model, digits(t["seed"], "sequence"), run, t["seed"])}


def _sensitivity(recs: list[Record], arm: str, seed: int) -> float:
    """Wortsman et al.'s LR sensitivity: mean over the LR sweep of (loss − best loss)."""
    losses = [r["final_loss"] for r in recs if r["arm"] == arm and r["seed"] == seed]
    best = min(losses)
    return sum(x - best for x in losses) / len(losses)


def _qk_analyze(p: Params, recs: list[Record]) -> Analysis:
    seeds = sorted({r["seed"] for r in recs})
    sens = {a: [_sensitivity(recs, a, s) for s in seeds] for a in QK_ARMS}
    top = max(p["lrs"])
    table = aggregate(recs, ["arm", "lr"], ["final_loss", "max_logit", "test_acc"])
    spread = ", ".join(
        f"{QK_LABEL[a]} {mean_std(sens[a])[0]:.3f} ± {mean_std(sens[a])[1]:.3f}" for a in QK_ARMS
    )
    checks = [
        Check(
            "QK-layernorm lowers the learning-rate sensitivity (mean over the sweep of the final "
            "loss minus the best)",
            "LR sensitivity",
            sens["qk-ln"],
            sens["none"],
            direction="lower",
            margin=p["margin"],
            claimed_label=QK_LABEL["qk-ln"],
            baseline_label=QK_LABEL["none"],
        ),
        Check(
            f"QK-layernorm keeps the largest attention logit smaller at the highest LR ({top:g})",
            "max |attention logit|",
            V(recs, "max_logit", arm="qk-ln", lr=top),
            V(recs, "max_logit", arm="none", lr=top),
            direction="lower",
            primary=False,
            claimed_label=QK_LABEL["qk-ln"],
            baseline_label=QK_LABEL["none"],
        ),
    ]
    notes = [
        f"LR sensitivity per seed (mean ± std over seeds): {spread}.",
        f"A diverged run (non-finite loss) counts as loss {LOSS_CAP} (chance is ln 10 ≈ 2.30); "
        "the final loss is the mean training loss over the last tenth of the steps.",
    ]
    return Analysis(table, checks, notes)


def _qk_plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    label = lambda r: QK_LABEL[r["arm"]]  # noqa: E731
    plots.lines(
        a1,
        recs,
        x="lr",
        y="final_loss",
        label=label,
        logx=True,
        xlabel="peak learning rate",
        ylabel="final training loss",
        title="loss vs learning rate",
    )
    plots.lines(
        a2,
        recs,
        x="lr",
        y="max_logit",
        label=label,
        logx=True,
        logy=True,
        xlabel="peak learning rate",
        ylabel="max |attention logit|",
        title="attention logits",
    )


def _qk_params(steps: int, depth: int, lrs: list[float]) -> dict[str, Any]:
    return {
        "dim": 32,
        "heads": 2,
        "depth": depth,
        "steps": steps,
        "batch": 64,
        "warmup": steps // 10,
        "lrs": lrs,
        "margin": 0.02,
    }


register(
    Experiment(
        id="qk-norm",
        title="QK-norm prevents the attention-logit growth instability at high learning rates",
        claim="Normalizing queries and keys keeps attention logits bounded, so training stays "
        "stable over a wider range of learning rates.",
        source="Wortsman et al. 2023 (arXiv:2309.14322; small transformers, LR sweep with "
        "AdamW, LR sensitivity, qk-layernorm), after Dehghani et al. 2023 (ViT-22B)",
        quick=_qk_params(120, 2, [3e-3, 1e-2, 3e-2, 1e-1]),
        full=_qk_params(800, 4, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]),
        tiny=_qk_params(4, 1, [1e-3, 1e-1]),
        describe=lambda p: (
            f"{_setup(p)}, linear warm-up over {p['warmup']} steps, peak learning rates "
            f"{', '.join(f'{x:g}' for x in p['lrs'])} ({p['lrs'][-1] / p['lrs'][0]:g}× apart); Pre-LN with and without "
            "LayerNorm on the queries and keys of each head. Scaled down from the paper's "
            "sweep of model sizes to one tiny model; the metric (LR sensitivity) and the "
            "instability's signature (max attention logit) are theirs."
        ),
        tasks=_qk_tasks,
        run=_qk_run,
        analyze=_qk_analyze,
        plot=_qk_plot,
    )
)

# --------------------------------------------------------------------------- placement

PL_ARMS = (("post", True), ("post", False), ("pre", True), ("pre", False))


def _pl_label(r: Record) -> str:
    return f"{'Post' if r['placement'] == 'post' else 'Pre'}-LN, {'warm-up' if r['warmup'] else 'no warm-up'}"


def _pl_tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "placement": pl, "warmup": w} for pl, w in PL_ARMS for s in seeds]


def _pl_run(p: Params, t: Record) -> Record:
    torch.manual_seed(t["seed"])
    model = _model(p, placement=t["placement"])
    warm = p["warmup"] if t["warmup"] else 0
    run = TransformerRun(p["steps"], p["lr"], p["batch"], warmup=warm, eval_every=p["eval_every"])
    return {**t, **train_transformer(model, digits(t["seed"], "sequence"), run, t["seed"])}


def _pl_analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["placement", "warmup"], ["test_acc", "final_loss"])

    def acc(placement: str, warmup: bool) -> list[float]:
        return V(recs, "test_acc", placement=placement, warmup=warmup)

    checks = [
        Check(
            "Post-LN needs warm-up: with it, a higher test accuracy than without",
            "test_acc",
            acc("post", True),
            acc("post", False),
            margin=p["margin"],
            claimed_label="Post-LN, warm-up",
            baseline_label="Post-LN, no warm-up",
        ),
        Check(
            f"Pre-LN trains without warm-up: not worse than with it by more than {p['margin']:.0%}",
            "test_acc",
            acc("pre", False),
            acc("pre", True),
            kind="noninferior",
            margin=p["margin"],
            claimed_label="Pre-LN, no warm-up",
            baseline_label="Pre-LN, warm-up",
        ),
        Check(
            "without warm-up, Pre-LN ends better than Post-LN",
            "test_acc",
            acc("pre", False),
            acc("post", False),
            margin=p["margin"],
            primary=False,
            claimed_label="Pre-LN, no warm-up",
            baseline_label="Post-LN, no warm-up",
        ),
    ]
    notes = [
        f"Same peak learning rate ({p['lr']}) for every arm; warm-up is linear over "
        f"{p['warmup']} steps. Post-LN: x ← LN(x + f(x)); Pre-LN: x ← x + f(LN(x)) plus a final "
        "LN (normkit.nn.ResidualNorm)."
    ]
    return Analysis(table, checks, notes)


def _pl_plot(p: Params, recs: list[Record], fig: Any) -> None:
    a1, a2 = fig.subplots(1, 2)
    plots.curves(
        a1,
        recs,
        x="step",
        y="test_acc_curve",
        label=_pl_label,
        ylabel="test accuracy",
        title="test accuracy while training",
    )
    plots.bars(a2, recs, y="test_acc", label=_pl_label, ylabel="final test accuracy", title="end")


def _pl_params(steps: int, depth: int) -> dict[str, Any]:
    return {
        "dim": 32,
        "heads": 2,
        "depth": depth,
        "steps": steps,
        "lr": 1e-2,
        "batch": 64,
        "warmup": steps // 4,
        "eval_every": max(1, steps // 10),
        "margin": 0.02,
    }


register(
    Experiment(
        id="placement-transformer",
        title="Post-LN needs warm-up; Pre-LN trains without it",
        claim="A Post-LN transformer needs a learning-rate warm-up to train well; moving the "
        "norm inside the residual branch (Pre-LN) removes that need.",
        source="Xiong et al. 2020 (arXiv:2002.04745; translation and BERT, Post-LN vs Pre-LN "
        "with and without warm-up at the same peak learning rate)",
        quick=_pl_params(150, 4),
        full=_pl_params(600, 6),
        tiny=_pl_params(4, 1),
        describe=lambda p: (
            f"{_setup(p)}, peak lr {p['lr']} for every arm; {{Post-LN, Pre-LN}} × {{linear "
            f"warm-up over {p['warmup']} steps, none}}. Scaled down from 6-layer translation "
            "models and BERT to a deep-for-its-width transformer on digits; the 2×2 design is "
            "the paper's."
        ),
        tasks=_pl_tasks,
        run=_pl_run,
        analyze=_pl_analyze,
        plot=_pl_plot,
    )
)
