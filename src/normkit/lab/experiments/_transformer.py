"""The training loop shared by the transformer experiments (dyt, qk-norm, placement-transformer):
AdamW with a linear learning-rate warm-up, the digits rows as 8-token sequences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from normkit.examples.data import Split
from normkit.examples.models import TinyTransformer
from normkit.lab.train import evaluate

__all__ = ["LOSS_CAP", "TransformerRun", "train_transformer"]

#: A diverged run's loss (and any loss above it) counts as this: above chance, ln 10 ≈ 2.30.
LOSS_CAP = 2.5


@dataclass(frozen=True)
class TransformerRun:
    steps: int
    lr: float
    batch: int = 64
    warmup: int = 0
    weight_decay: float = 0.0
    eval_every: int = 0


def train_transformer(
    model: TinyTransformer, data: Split, run: TransformerRun, seed: int
) -> dict[str, Any]:
    """Train with AdamW (lr linearly warmed up over ``warmup`` steps, then constant); return the
    final train loss (mean of the last tenth of the steps, capped at :data:`LOSS_CAP`, the cap
    for a run that diverged), test accuracy/loss, the test-accuracy curve and the largest
    attention logit seen."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    n = data.n_train
    perm, pos = torch.randperm(n, generator=g), 0
    losses: list[float] = []
    steps: list[int] = []
    curve: list[float] = []
    diverged = False
    model.train()
    for step in range(1, run.steps + 1):
        for group in opt.param_groups:
            group["lr"] = run.lr * min(1.0, step / run.warmup) if run.warmup else run.lr
        if pos + run.batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + run.batch]
        pos += run.batch
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if run.eval_every and step % run.eval_every == 0:
            steps.append(step)
            curve.append(evaluate(model, data.x_test, data.y_test)[0])
    tail = losses[-max(1, run.steps // 10) :]
    final = LOSS_CAP if diverged or not tail else min(LOSS_CAP, sum(tail) / len(tail))
    acc, test_loss = evaluate(model, data.x_test, data.y_test) if not diverged else (0.1, LOSS_CAP)
    if not math.isfinite(test_loss):
        acc, test_loss = 0.1, LOSS_CAP
    return {
        "final_loss": final,
        "test_acc": acc,
        "test_loss": min(test_loss, LOSS_CAP),
        "diverged": diverged,
        "step": steps,
        "test_acc_curve": curve,
        "max_logit": max((a.max_logit for a in model.attentions()), default=0.0),
    }
