"""Ba, Kiros & Hinton 2016: layer norm stabilizes the hidden-state dynamics of recurrent nets
(LSTM vs :class:`normkit.nn.LayerNormLSTM`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit.examples.data import Split, digits, long_range
from normkit.lab import plots
from normkit.lab.experiment import Analysis, Experiment, Params, Record, aggregate, register
from normkit.lab.experiment import values as V
from normkit.lab.train import TrainSpec, train
from normkit.lab.verdict import Check
from normkit.nn import LayerNormLSTM

ARMS = {"lstm": "LSTM", "ln-lstm": "LN-LSTM"}
TASKS = ("digits", "long-range")


class SeqClassifier(nn.Module):
    """An LSTM (``torch.nn.LSTM`` or normkit's ``LayerNormLSTM``) read out at the last step."""

    def __init__(self, d_in: int, hidden: int, classes: int, *, ln: bool) -> None:
        super().__init__()
        cls = LayerNormLSTM if ln else nn.LSTM
        self.rnn = cls(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def states(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return out  # (N, T, H)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.states(x)[:, -1])


def _data(p: Params, task: str, seed: int) -> Split:
    if task == "digits":
        return digits(seed, "sequence")
    return long_range(seed, length=p["length"], n_train=p["n_train"], n_test=p["n_test"])


def _tasks(p: Params, seeds: Sequence[int]) -> list[Record]:
    return [{"seed": s, "task": t, "arm": a} for t in TASKS for a in ARMS for s in seeds]


def _run(p: Params, t: Record) -> Record:
    data = _data(p, t["task"], t["seed"])
    torch.manual_seed(t["seed"])
    model = SeqClassifier(
        data.x_train.shape[2], p["hidden"], data.num_classes, ln=t["arm"] == "ln-lstm"
    )
    spec = TrainSpec(
        steps=p["steps"][t["task"]],
        lr=p["lr"],
        optimizer="adam",
        batch_size=p["batch_size"],
        eval_every=p["eval_every"],
        target=p["target"],
        grad_clip=1.0,
    )
    h = train(model, data, spec, seed=t["seed"])
    model.eval()
    with torch.no_grad():
        norms = model.states(data.x_test).norm(dim=2).mean(dim=0)  # mean ‖h_t‖ per step
    mu = norms.mean().item()
    cv = norms.std().item() / mu if mu > 0 else 0.0
    reached = h.steps_to_target is not None
    return {
        **t,
        "test_acc": h.final_test_acc,
        "steps_to_target": h.steps_to_target if reached else spec.steps + p["eval_every"],
        "reached_target": reached,
        "hnorm_cv": cv,
        "hnorm_by_step": norms.tolist(),
        "curve_steps": h.steps,
        "curve_test_acc": h.test_acc,
    }


def _analyze(p: Params, recs: list[Record]) -> Analysis:
    table = aggregate(recs, ["task", "arm"], ["test_acc", "steps_to_target", "hnorm_cv"])
    checks = []
    for task in TASKS:
        checks.append(
            Check(
                f"{task}: LN-LSTM's hidden-state norm varies less across time steps (coefficient "
                "of variation of mean ‖h_t‖ over t)",
                "hnorm_cv",
                V(recs, "hnorm_cv", task=task, arm="ln-lstm"),
                V(recs, "hnorm_cv", task=task, arm="lstm"),
                direction="lower",
                claimed_label="ln-lstm",
                baseline_label="lstm",
            )
        )
        checks.append(
            Check(
                f"{task}: LN-LSTM reaches {p['target']:.0%} test accuracy in fewer steps",
                "steps_to_target",
                V(recs, "steps_to_target", task=task, arm="ln-lstm"),
                V(recs, "steps_to_target", task=task, arm="lstm"),
                direction="lower",
                margin=p["eval_every"],
                claimed_label="ln-lstm",
                baseline_label="lstm",
            )
        )
        checks.append(
            Check(
                f"{task}: LN-LSTM ends with a higher test accuracy",
                "test_acc",
                V(recs, "test_acc", task=task, arm="ln-lstm"),
                V(recs, "test_acc", task=task, arm="lstm"),
                margin=0.005,
                primary=False,
                claimed_label="ln-lstm",
                baseline_label="lstm",
            )
        )
    notes = ["Runs that never reach the target count at budget + one evaluation interval."]
    return Analysis(table, checks, notes)


def _plot(p: Params, recs: list[Record], fig: Any) -> None:
    axes = fig.subplots(1, 3)
    for ax, task in zip(axes[:2], TASKS, strict=True):
        plots.curves(
            ax,
            [r for r in recs if r["task"] == task],
            x="curve_steps",
            y="curve_test_acc",
            label=lambda r: ARMS[r["arm"]],
            title=f"{task}: test accuracy",
            ylabel="test accuracy",
        )
    ax = axes[2]
    for i, arm in enumerate(ARMS):
        rs = [r for r in recs if r["task"] == "long-range" and r["arm"] == arm]
        n = len(rs[0]["hnorm_by_step"])
        mean = [sum(r["hnorm_by_step"][k] for r in rs) / len(rs) for k in range(n)]
        ax.plot(range(1, n + 1), mean, color=plots.COLORS[i], label=ARMS[arm])
    ax.set_title("long-range: mean ‖h_t‖ over time steps (test set)", fontsize=9)
    ax.set_xlabel("time step t")
    ax.set_ylabel("mean ‖h_t‖")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_ylim(
        bottom=0, top=max(1e-3, ax.get_ylim()[1]) if math.isfinite(ax.get_ylim()[1]) else None
    )


register(
    Experiment(
        id="rnn-ln",
        title="Layer norm stabilizes recurrent hidden-state dynamics",
        claim="Layer normalization (statistics per sample and time step) stabilizes the hidden-state "
        "dynamics of recurrent networks and speeds up their training.",
        source="Ba, Kiros & Hinton 2016 (LN-LSTM: gates = LN(W_h h) + LN(W_x x) + b, "
        "h_t = σ(o)⊙tanh(LN(c_t)))",
        quick={
            "hidden": 32,
            "steps": {"digits": 150, "long-range": 150},
            "length": 16,
            "n_train": 512,
            "n_test": 256,
            "lr": 0.005,
            "batch_size": 64,
            "eval_every": 15,
            "target": 0.9,
        },
        full={
            "hidden": 64,
            "steps": {"digits": 800, "long-range": 800},
            "length": 40,
            "n_train": 2048,
            "n_test": 512,
            "lr": 0.005,
            "batch_size": 64,
            "eval_every": 40,
            "target": 0.9,
        },
        tiny={
            "hidden": 4,
            "steps": {"digits": 3, "long-range": 3},
            "length": 5,
            "n_train": 32,
            "n_test": 16,
            "lr": 0.005,
            "batch_size": 16,
            "eval_every": 1,
            "target": 0.9,
        },
        describe=lambda p: (
            "Digits as 8-step sequences of 8-pixel rows, and a generated long-range task (length "
            f"{p['length']}, the 4-way label is coded only in step 0, the rest is noise). One LSTM "
            f"layer of {p['hidden']} units read out at the last step: torch.nn.LSTM vs "
            "normkit.nn.LayerNormLSTM (LN on both gate inputs and on the cell). Adam lr "
            f"{p['lr']}, batch {p['batch_size']}, gradient-norm clipping at 1, steps "
            f"{p['steps']}, test accuracy every {p['eval_every']} steps. Hidden-state stability: "
            "the mean ‖h_t‖ over the test set at each step t after training, summarised by its "
            "coefficient of variation over t."
        ),
        tasks=_tasks,
        run=_run,
        analyze=_analyze,
        plot=_plot,
    )
)
