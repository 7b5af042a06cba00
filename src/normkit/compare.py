"""``normkit compare``: every normkit layer against its torch.nn twin, train and eval.

A self-check users can run on their own machine: max abs differences of outputs, input and
parameter gradients and running buffers after a few steps, and the time ratio (normkit / torch).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import normkit.nn as nkn

__all__ = ["PAIRS", "Comparison", "Pair", "add_parser", "compare_pair", "run_compare"]


@dataclass(frozen=True)
class Pair:
    """A normkit layer, its torch.nn twin and an input shape."""

    name: str
    ours: Callable[[], nn.Module]
    theirs: Callable[[], nn.Module]
    shape: tuple[int, ...]
    channels_last: bool = False


PAIRS: tuple[Pair, ...] = (
    Pair("BatchNorm1d", lambda: nkn.BatchNorm1d(64), lambda: nn.BatchNorm1d(64), (128, 64)),
    Pair("BatchNorm2d", lambda: nkn.BatchNorm2d(32), lambda: nn.BatchNorm2d(32), (16, 32, 28, 28)),
    Pair(
        "BatchNorm2d channels_last",
        lambda: nkn.BatchNorm2d(32),
        lambda: nn.BatchNorm2d(32),
        (16, 32, 28, 28),
        True,
    ),
    Pair("BatchNorm3d", lambda: nkn.BatchNorm3d(8), lambda: nn.BatchNorm3d(8), (4, 8, 8, 16, 16)),
    Pair("LayerNorm", lambda: nkn.LayerNorm(512), lambda: nn.LayerNorm(512), (64, 32, 512)),
    Pair("RMSNorm", lambda: nkn.RMSNorm(512), lambda: nn.RMSNorm(512), (64, 32, 512)),
    Pair("GroupNorm", lambda: nkn.GroupNorm(8, 32), lambda: nn.GroupNorm(8, 32), (16, 32, 28, 28)),
    Pair(
        "InstanceNorm2d",
        lambda: nkn.InstanceNorm2d(32, affine=True, track_running_stats=True),
        lambda: nn.InstanceNorm2d(32, affine=True, track_running_stats=True),
        (16, 32, 28, 28),
    ),
    Pair(
        "ChannelNorm",
        lambda: nkn.ChannelNorm(32),
        lambda: nn.InstanceNorm1d(32, affine=True),
        (16, 32, 256),
    ),
)


@dataclass(frozen=True)
class Comparison:
    name: str
    mode: str
    out_diff: float
    grad_diff: float
    buffer_diff: float
    time_ratio: float


def _rel(a: Tensor, b: Tensor) -> float:
    """max|a − b| / max(1, max|b|): absolute near 0, relative for large values (sums of grads)."""
    b64 = b.double()
    return ((a.double() - b64).abs().max() / b64.abs().max().clamp_min(1)).item()


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max((_rel(a[k], b[k]) for k in a if k in b and a[k].is_floating_point()), default=0.0)


def _step(m: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    xi = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(xi)
    y.backward(torch.ones_like(y) + torch.linspace(0, 1, y.numel()).reshape(y.shape))
    grads = {"input": xi.grad}
    grads.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return y.detach(), grads


def _time(m: nn.Module, x: Tensor, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _step(m, x)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def compare_pair(pair: Pair, *, train: bool, steps: int = 3, reps: int = 5) -> Comparison:
    """Run ``steps`` steps of both layers on the same inputs and measure the differences."""
    torch.manual_seed(0)
    ours, theirs = pair.ours(), pair.theirs()
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    ours.train(train)
    theirs.train(train)
    out_d = grad_d = 0.0
    for _ in range(steps):
        x = torch.randn(pair.shape) * 2 + 1
        if pair.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y1, g1 = _step(ours, x)
        y2, g2 = _step(theirs, x)
        out_d = max(out_d, _rel(y1, y2))
        grad_d = max(grad_d, _max_diff(g1, g2))
    buf_d = _max_diff(dict(ours.named_buffers()), dict(theirs.named_buffers()))
    x = torch.randn(pair.shape)
    if pair.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ratio = _time(ours, x, reps) / _time(theirs, x, reps)
    return Comparison(pair.name, "train" if train else "eval", out_d, grad_d, buf_d, ratio)


def run_compare(pairs: tuple[Pair, ...] = PAIRS, *, reps: int = 5) -> list[Comparison]:
    """Compare every pair in train and eval mode."""
    return [compare_pair(p, train=t, reps=reps) for p in pairs for t in (True, False)]


def _render(rows: list[Comparison], tolerance: float) -> bool:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="normkit vs torch.nn (float32; max |diff| / max(1, |torch|); time = normkit / torch)"
    )
    for col in ("layer", "mode", "output", "grads", "running stats", "time ratio", "ok"):
        table.add_column(col, justify="left" if col in ("layer", "mode") else "right")
    all_ok = True
    for r in rows:
        ok = max(r.out_diff, r.grad_diff, r.buffer_diff) <= tolerance
        all_ok &= ok
        table.add_row(
            r.name,
            r.mode,
            f"{r.out_diff:.1e}",
            f"{r.grad_diff:.1e}",
            f"{r.buffer_diff:.1e}",
            f"{r.time_ratio:.2f}x",
            "[green]yes[/]" if ok else "[red]NO[/]",
        )
    Console().print(table)
    return all_ok


def _main(args: argparse.Namespace) -> int:
    rows = run_compare(reps=args.reps)
    return 0 if _render(rows, args.tolerance) else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="check every normkit layer against its torch.nn twin")
    p.add_argument("--reps", type=int, default=5, help="timing repetitions (median)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative difference allowed")
    p.set_defaults(func=_main)
