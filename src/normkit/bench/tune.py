"""``normkit tune``: measure which backend is fastest per op, direction, layout and size, and
cache the table that ``backend="auto"`` follows (see :mod:`normkit.backends.registry`).

Like ``torch.backends.cudnn.benchmark`` for convolutions: the choice depends on the machine
(cores, caches, memory bandwidth, how busy it is), so it is measured there. Every cell times the
public functional call (``normkit.functional.*(..., backend=name)``: what a layer runs) of torch
and of every other available backend in alternation, and keeps a backend only where it beat
torch by at least ``--margin`` (10%); everywhere else ``auto`` stays on torch. The table is written to
:func:`normkit.backends.registry.user_table_path` (or ``--out``) and used from the next
resolution on; delete the file to go back to the table shipped with normkit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from normkit import backends
from normkit import functional as NF
from normkit.backends.registry import ROW_OPS

__all__ = [
    "DEFAULT_SIZES",
    "TUNED_OPS",
    "TuneCell",
    "add_parser",
    "cells",
    "measure_cell",
    "smooth",
    "tune",
]

#: The registry ops ``tune`` measures (the functional call that runs each).
TUNED_OPS: tuple[str, ...] = (
    "batch_norm_train",
    "batch_norm_eval",
    "layer_norm",
    "rms_norm",
    "group_norm",
    "instance_norm",
    "add_layer_norm",
    "add_rms_norm",
    "rms_norm_cast",
    "dyt",
    "modulate",
)
_CHANNEL_OPS = ("batch_norm_train", "batch_norm_eval", "group_norm", "instance_norm")
#: Input sizes measured by default, as powers of two (elements): every octave from 8 Ki to 8 Mi
#: values, so a layer is never judged by a cell four times smaller or larger than itself.
DEFAULT_SIZES: tuple[int, ...] = tuple(range(13, 24))
_HIDDEN = 1024  # row length of the row-wise ops
_CHANNELS = 64  # channels of the channel ops, in (8, 64, H, W) inputs


@dataclass(frozen=True)
class TuneCell:
    """One measurement: ``op`` on a float input of ``2**log2`` elements."""

    op: str
    direction: str  # "fwd" or "fwd+bwd"
    layout: str  # "contiguous", "channels_last" or "rows" (2-D batch norm input)
    log2: int
    dtype: torch.dtype = torch.float32

    @property
    def shape(self) -> tuple[int, ...]:
        if self.op in _CHANNEL_OPS and self.layout != "rows":
            hw = self.log2 - 9  # 8 × 64 = 2^9
            return (8, _CHANNELS, 1 << (hw // 2), 1 << (hw - hw // 2))
        if self.op == "modulate":  # (samples, tokens, features), 8 samples
            return (8, 1 << (self.log2 - 13), _HIDDEN)
        return (1 << (self.log2 - 10), _HIDDEN)


def cells(
    sizes: Sequence[int], ops: Sequence[str] = TUNED_OPS, dtypes: Sequence[torch.dtype] = ()
) -> list[TuneCell]:
    """The grid: ops × directions × layouts (channels_last for channel ops, rows for 2-D batch
    norm) × sizes × dtypes."""
    out: list[TuneCell] = []
    for dt in dtypes or (torch.float32,):
        for op in ops:
            layouts: tuple[str, ...] = ("contiguous",)
            if op in _CHANNEL_OPS:
                layouts += ("channels_last",)
            if op in ROW_OPS:  # 2-D (N, C) batch norm: features streamed as rows
                layouts += ("rows",)
            for layout in layouts:
                for d in ("fwd", "fwd+bwd"):
                    out.extend(TuneCell(op, d, layout, k, dt) for k in sizes)
    return out


def _call(cell: TuneCell, backend: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cell.shape, generator=g, dtype=cell.dtype)
    if cell.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    c = x.shape[1] if cell.op in _CHANNEL_OPS else x.shape[-1]
    # (modulate's w and b are its per-sample shift and scale)
    per = (x.shape[0], c) if cell.op == "modulate" else (c,)
    w = torch.rand(per, generator=g, dtype=cell.dtype) + 0.5
    b = torch.randn(per, generator=g, dtype=cell.dtype)
    r = torch.randn_like(x)
    alpha = torch.full((1,), 0.5, dtype=cell.dtype, requires_grad=cell.direction != "fwd")
    rm, rv = torch.zeros(c, dtype=cell.dtype), torch.ones(c, dtype=cell.dtype)
    op, h = cell.op, (x.shape[-1],)
    fns: dict[str, Callable[[Tensor, Tensor, Tensor], Any]] = {
        "batch_norm_train": lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, True, backend=backend),
        "batch_norm_eval": lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, False, backend=backend),
        "layer_norm": lambda x, w, b: NF.layer_norm(x, h, w, b, backend=backend),
        "rms_norm": lambda x, w, b: NF.rms_norm(x, h, w, 1e-6, backend=backend),
        "group_norm": lambda x, w, b: NF.group_norm(x, 8, w, b, backend=backend),
        "instance_norm": lambda x, w, b: NF.instance_norm(x, None, None, w, b, backend=backend),
        "add_layer_norm": lambda x, w, b: NF.add_layer_norm(x, r, h, w, b, backend=backend),
        "add_rms_norm": lambda x, w, b: NF.add_rms_norm(x, r, h, w, 1e-6, backend=backend),
        "rms_norm_cast": lambda x, w, b: NF.rms_norm(
            x, h, w, 1e-6, casting="llama", backend=backend
        ),
        "dyt": lambda x, w, b: NF.dyt(x, alpha, w, b, backend=backend),
        "modulate": lambda x, w, b: NF.modulate(x, w, b, backend=backend),
    }
    fn = fns[op]
    if cell.direction == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                fn(x, w, b)

        return fwd, None
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = fn(*leaves)
    grads = [torch.randn_like(o) for o in (out if isinstance(out, tuple) else (out,))]

    def clear() -> None:
        for t in (*leaves, alpha):
            t.grad = None

    def fwd_bwd() -> None:
        o = fn(*leaves)
        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)

    return fwd_bwd, clear


def measure_cell(cell: TuneCell, contenders: Sequence[str], reps: int) -> dict[str, float]:
    """Seconds per call of each contender (``"torch"`` first) on ``cell``, interleaved: the
    median of the calling thread's CPU time with one intra-op thread (time other processes
    hold the core left out), else the fastest wall time of the rounds."""
    from normkit.bench.timing import measure_interleaved

    probe = torch.empty(cell.shape, dtype=cell.dtype)
    if cell.layout == "channels_last":
        probe = probe.contiguous(memory_format=torch.channels_last)
    usable = [b for b in contenders if backends.get(b).check(cell.op, probe) is None]
    calls = {b: _call(cell, b) for b in ("torch", *[b for b in usable if b != "torch"])}
    if torch.get_num_threads() == 1:
        times = measure_interleaved(calls, reps=reps, warmup=2, clock=time.thread_time)
        return {b: t.median for b, t in times.items()}
    return {b: t.min for b, t in measure_interleaved(calls, reps=reps, warmup=2).items()}


def tune(
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    ops: Sequence[str] = TUNED_OPS,
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    reps: int = 7,
    margin: float = 1.10,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the grid and return the table (``{"meta": ..., "rows": [...]}``).

    A row names the fastest backend of its cell when that one beat torch by ``margin`` (time
    ratio), else ``"torch"``; ``speedup`` is torch's time over the chosen backend's.
    """
    contenders = [b for b in backends.available() if b not in ("reference", "torch")]
    grid = cells(sizes, ops, dtypes)
    rows: list[dict[str, Any]] = []

    def one(cell: TuneCell) -> None:
        times = measure_cell(cell, contenders, reps)
        best = min(times, key=times.__getitem__)
        if times["torch"] / times[best] < margin:
            best = "torch"
        rows.append(
            {
                "op": cell.op,
                "dir": cell.direction,
                "device": "cpu",
                "dtype": str(cell.dtype).removeprefix("torch."),
                "layout": cell.layout,
                "numel": 1 << cell.log2,
                "backend": best,
                "speedup": round(times["torch"] / times[best], 3),
                **{f"{b} ms": round(t * 1e3, 4) for b, t in times.items()},
            }
        )

    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("tuning", total=len(grid))
            for cell in grid:
                bar.update(
                    task, description=f"{cell.op} {cell.layout} {cell.direction} 2^{cell.log2}"
                )
                one(cell)
                bar.advance(task)
    else:
        for cell in grid:
            one(cell)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "margin": margin,
        "contenders": ["torch", *contenders],
    }
    return {"meta": meta, "rows": smooth(rows)}


def smooth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Overrule isolated cells: where a cell's backend differs from both neighbouring sizes of
    its signature and those two agree, it takes theirs (one noisy measurement must not send one
    size class to a backend that loses on either side of it). The overruled choice is kept in
    the row as ``"measured"``.

    >>> rows = [{"op": "x", "dir": "fwd", "device": "cpu", "dtype": "float32",
    ...          "layout": "contiguous", "numel": 2**k, "backend": b}
    ...         for k, b in ((13, "torch"), (14, "numba"), (15, "torch"))]
    >>> [r["backend"] for r in smooth(rows)]
    ['torch', 'torch', 'torch']
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["op"], r["dir"], r["device"], r["dtype"], r["layout"])
        groups.setdefault(key, []).append(r)
    out = {id(r): r for r in rows}
    for column in groups.values():
        column.sort(key=lambda r: r["numel"])
        for lo, mid, hi in zip(column, column[1:], column[2:], strict=False):
            if lo["backend"] == hi["backend"] != mid["backend"]:
                out[id(mid)] = {**mid, "backend": lo["backend"], "measured": mid["backend"]}
    return [out[id(r)] for r in rows]


def _main(args: argparse.Namespace) -> int:
    from normkit.backends import registry
    from normkit.bench.report import print_table

    if args.show:
        print(f"auto follows {registry.auto_table_path()}")
        print_table(registry.auto_table(), title="normkit auto table")
        return 0
    dtypes = [getattr(torch, d) for d in args.dtypes]
    table = tune(
        args.sizes, ops=args.ops or TUNED_OPS, dtypes=dtypes, reps=args.reps, margin=args.margin
    )
    out = Path(args.out) if args.out else registry.user_table_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1) + "\n")
    print_table(table["rows"], title="normkit tune (ms: fastest interleaved repetition)")
    print(f"wrote {len(table['rows'])} rows to {out}")
    if args.out is None:
        registry.set_auto_table(None)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="measure the fastest backend per op/size on this machine; cache it for 'auto'",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=list(DEFAULT_SIZES),
        metavar="LOG2",
        help="input sizes as powers of two (elements)",
    )
    p.add_argument("--ops", nargs="+", choices=TUNED_OPS, default=None, help="only these ops")
    p.add_argument(
        "--dtypes", nargs="+", choices=["float32", "float64"], default=["float32"], help="dtypes"
    )
    p.add_argument("--reps", type=int, default=9, help="interleaved repetitions per cell")
    p.add_argument(
        "--margin",
        type=float,
        default=1.10,
        help="a backend replaces torch only where torch's time / its time >= this",
    )
    p.add_argument("--out", default=None, metavar="PATH", help="write here, not the user cache")
    p.add_argument("--show", action="store_true", help="print the table auto follows and exit")
    p.set_defaults(func=_main)
