"""One training loop for every lab experiment: same optimizer, schedule and budget on every arm.

A diverged run (non-finite loss) stops early; its accuracy is then measured as is, with
non-finite predictions counted as wrong, so every metric stays finite (the verdict rule needs
finite values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normkit.examples.data import Split

__all__ = ["History", "TrainSpec", "accuracy", "evaluate", "train"]


@dataclass(frozen=True)
class TrainSpec:
    """The budget and optimizer of one run.

    ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adam"``. ``eval_every=0`` evaluates only at
    the end. ``target`` is the test accuracy whose first crossing is recorded as
    ``steps_to_target``.
    """

    steps: int
    lr: float
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_every: int = 0
    target: float | None = None
    grad_clip: float | None = None


@dataclass
class History:
    """What a run produced. Curves are sampled every ``eval_every`` steps (and at step 0)."""

    steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    final_test_acc: float = 0.0
    final_train_acc: float = 0.0
    final_test_loss: float = 0.0
    final_train_loss: float = 0.0
    steps_to_target: int | None = None
    diverged: bool = False
    steps_done: int = 0


def _logits(model: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose argmax is ``y``; rows with a non-finite logit count as wrong."""
    ok = torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) == y)
    return ok.double().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode; the loss is capped at 1e6 when non-finite."""
    was = model.training
    model.eval()
    logits = _logits(model, x)
    model.train(was)
    loss = F.cross_entropy(logits, y).item()
    return accuracy(logits, y), loss if math.isfinite(loss) else 1e6


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        )
    if spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam' (got {spec.optimizer!r})")


def train(
    model: nn.Module,
    data: Split,
    spec: TrainSpec,
    *,
    seed: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    on_eval: Callable[[int, nn.Module], None] | None = None,
    on_step: Callable[[int, nn.Module, Tensor, Tensor], None] | None = None,
) -> History:
    """Train ``model`` on ``data`` with mini-batches drawn from a ``seed``-ed generator.

    ``on_eval(step, model)`` runs at every evaluation point; ``on_step(step, model, xb, yb)``
    before every optimizer step (after backward), e.g. to probe the loss landscape.
    """
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, spec)
    hist = History()
    n = data.n_train
    bs = min(spec.batch_size, n)
    perm = torch.randperm(n, generator=g)
    pos = 0
    recent: list[float] = []
    model.train()

    def record(step: int) -> None:
        acc, _ = evaluate(model, data.x_test, data.y_test)
        hist.steps.append(step)
        hist.test_acc.append(acc)
        hist.train_loss.append(sum(recent) / len(recent) if recent else float("nan"))
        recent.clear()
        if spec.target is not None and hist.steps_to_target is None and acc >= spec.target:
            hist.steps_to_target = step
        if on_eval is not None:
            on_eval(step, model)

    if spec.eval_every:
        record(0)
    for step in range(1, spec.steps + 1):
        if pos + bs > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        idx = perm[pos : pos + bs]
        pos += bs
        xb, yb = data.x_train[idx], data.y_train[idx]
        loss = loss_fn(model(xb), yb)
        if not torch.isfinite(loss):
            hist.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        if on_step is not None:
            on_step(step, model, xb, yb)
        opt.step()
        recent.append(loss.item())
        hist.steps_done = step
        if spec.eval_every and step % spec.eval_every == 0:
            record(step)
    if data.num_classes:
        hist.final_test_acc, hist.final_test_loss = evaluate(model, data.x_test, data.y_test)
        hist.final_train_acc, hist.final_train_loss = evaluate(model, data.x_train, data.y_train)
    return hist
