"""``normkit compare``: every normkit layer against its torch.nn twin, over a size grid.

A self-check users can run on their own machine. For each layer, size (tiny, small, medium,
large), mode (train, eval), direction (forward, forward + backward) and memory layout
(contiguous, channels_last for 4-D/5-D inputs) it reports:

* ``ratio`` — normkit time / torch.nn time, the two measured in alternation in one run (a
  change of machine load hits both alike); ``> 1`` means normkit is slower. With one intra-op
  thread (``OMP_NUM_THREADS=1``) the times are medians of the calling thread's CPU time, which
  leave out the time other processes hold the core; with more threads, the fastest wall time
  of the rounds;
* ``ops`` / ``torch ops`` — the ATen ops one call dispatches (counted with a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode`; device-independent, so it stands in
  for the kernel launches of the same call on a GPU);
* for exact twins, the max relative difference of outputs, gradients (input and parameters)
  and running buffers after a few steps on the same inputs.

The training family (BatchRenorm, GhostBatchNorm, FrozenBatchNorm, the Keras-style BN, masked
BN/LN) has no torch.nn twin; it is timed against a plain torch.nn norm of the same shape (the
layer a user would otherwise run) and its differences are not reported.

``--models`` also times whole training steps (forward, backward, SGD step) of small CNNs with
torch.nn norms against the same model after :func:`normkit.inference.convert`.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import normkit.nn as nkn

__all__ = [
    "PAIRS",
    "SHAPES",
    "SIZES",
    "Pair",
    "add_parser",
    "compare_pair",
    "count_ops",
    "run_compare",
    "run_model_steps",
]

SIZES: tuple[str, ...] = ("tiny", "small", "medium", "large")

#: Input shapes per layout kind and size: ~8k, ~0.5M, ~2M and ~6.4M elements.
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "nc": {
        "tiny": (128, 64),
        "small": (512, 1024),
        "medium": (2048, 1024),
        "large": (6272, 1024),
    },
    "ncl": {
        "tiny": (8, 16, 64),
        "small": (32, 64, 256),
        "medium": (32, 64, 1024),
        "large": (32, 64, 3136),
    },
    "nchw": {
        "tiny": (8, 16, 8, 8),
        "small": (32, 64, 16, 16),
        "medium": (32, 64, 32, 32),
        "large": (32, 64, 56, 56),
    },
    "nhwc": {
        "tiny": (8, 8, 8, 16),
        "small": (32, 16, 16, 64),
        "medium": (32, 32, 32, 64),
        "large": (32, 56, 56, 64),
    },
    "ncdhw": {
        "tiny": (4, 8, 4, 8, 8),
        "small": (8, 32, 8, 16, 16),
        "medium": (8, 32, 8, 32, 32),
        "large": (16, 64, 8, 28, 28),
    },
    "ntc": {
        "tiny": (8, 16, 64),
        "small": (32, 64, 256),
        "medium": (16, 128, 1024),
        "large": (64, 100, 1024),
    },
}


def _channels(kind: str, shape: tuple[int, ...]) -> int:
    return shape[-1] if kind in ("ntc", "nhwc") else shape[1]


@dataclass(frozen=True)
class Pair:
    """A normkit layer and the torch.nn layer it is measured against, built per input shape.

    ``ours``/``theirs`` take the feature count. ``twin``: the two compute the same function
    (differences are checked); otherwise ``theirs`` is the plain norm the layer is weighed
    against. ``stateful``: the layer has running statistics, so train and eval differ.
    ``mask``: ``ours`` is called with a padding mask over the batch and length dims.
    """

    name: str
    ours: Callable[[int], nn.Module]
    theirs: Callable[[int], nn.Module]
    kind: str
    twin: bool = True
    stateful: bool = False
    mask: bool = False

    @property
    def layouts(self) -> tuple[str, ...]:
        nd = len(SHAPES[self.kind]["tiny"])
        return (
            ("contiguous", "channels_last")
            if nd in (4, 5) and self.kind != "nhwc"
            else ("contiguous",)
        )


class _ToChannelsFirst(nn.Module):
    """Runs a channels-first torch.nn norm on a channels-last ``(N, *, C)`` tensor."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)


PAIRS: tuple[Pair, ...] = (
    Pair("BatchNorm1d", nkn.BatchNorm1d, nn.BatchNorm1d, "nc", stateful=True),
    Pair("BatchNorm2d", nkn.BatchNorm2d, nn.BatchNorm2d, "nchw", stateful=True),
    Pair("BatchNorm3d", nkn.BatchNorm3d, nn.BatchNorm3d, "ncdhw", stateful=True),
    Pair("LayerNorm", nkn.LayerNorm, nn.LayerNorm, "ntc"),
    Pair("RMSNorm", nkn.RMSNorm, nn.RMSNorm, "ntc"),
    Pair("GroupNorm", lambda c: nkn.GroupNorm(8, c), lambda c: nn.GroupNorm(8, c), "nchw"),
    Pair(
        "InstanceNorm2d",
        lambda c: nkn.InstanceNorm2d(c, affine=True, track_running_stats=True),
        lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
        "nchw",
        stateful=True,
    ),
    Pair(
        "ChannelNorm",
        nkn.ChannelNorm,
        lambda c: nn.InstanceNorm1d(c, affine=True),
        "ncl",
    ),
    Pair(
        "BatchNormAct2d",
        nkn.BatchNormAct2d,
        lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()),
        "nchw",
        stateful=True,
    ),
    Pair(
        "GroupNormAct",
        lambda c: nkn.GroupNormAct(8, c),
        lambda c: nn.Sequential(nn.GroupNorm(8, c), nn.ReLU()),
        "nchw",
    ),
    Pair(
        "LayerNormAct",
        nkn.LayerNormAct,
        lambda c: nn.Sequential(nn.LayerNorm(c), nn.ReLU()),
        "ntc",
    ),
    # the training family, against the plain torch.nn norm of the same shape
    Pair("BatchRenorm2d", nkn.BatchRenorm2d, nn.BatchNorm2d, "nchw", twin=False, stateful=True),
    Pair(
        "GhostBatchNorm2d",
        lambda c: nkn.GhostBatchNorm2d(c, virtual_batch_size=4),
        nn.BatchNorm2d,
        "nchw",
        twin=False,
        stateful=True,
    ),
    Pair(
        "FrozenBatchNorm2d",
        nkn.FrozenBatchNorm2d,
        nn.BatchNorm2d,
        "nchw",
        twin=False,
        stateful=True,
    ),
    Pair(
        "BatchNormalization",
        lambda c: nkn.BatchNormalization(num_features=c),
        lambda c: _ToChannelsFirst(nn.BatchNorm2d(c)),
        "nhwc",
        twin=False,
        stateful=True,
    ),
    Pair(
        "BatchNorm1d masked",
        nkn.BatchNorm1d,
        nn.BatchNorm1d,
        "ncl",
        twin=False,
        stateful=True,
        mask=True,
    ),
    Pair("LayerNorm masked", nkn.LayerNorm, nn.LayerNorm, "ntc", twin=False, mask=True),
)


# --------------------------------------------------------------------------- op counting


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> collections.Counter[str]:
    """The ATen ops ``fn()`` dispatches (name → calls), autograd's backward ops included.

    >>> count_ops(lambda: torch.ones(3).add(1))
    Counter({'ones': 1, 'add': 1})
    """
    counter = _OpCounter()
    with counter:
        fn()
    return counter.ops


# --------------------------------------------------------------------------- one grid cell


def _rel(a: Tensor, b: Tensor) -> float:
    """max|a − b| / max(1, max|b|): absolute near 0, relative for large values (sums of grads)."""
    b64 = b.double()
    return ((a.double() - b64).abs().max() / b64.abs().max().clamp_min(1)).item()


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max((_rel(a[k], b[k]) for k in a if k in b and a[k].is_floating_point()), default=0.0)


def _input(pair: Pair, shape: tuple[int, ...], layout: str, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2 + 1
    if layout == "channels_last":
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    return x


def _mask(pair: Pair, shape: tuple[int, ...]) -> Tensor | None:
    """Padding mask over (batch, length): the first three quarters of every sequence are real."""
    if not pair.mask:
        return None
    length = shape[-1] if pair.kind == "ncl" else shape[1]
    keep = torch.arange(length) < max(2, (3 * length) // 4)
    return keep.expand(shape[0], length)


def _call(m: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    return m(x) if mask is None else m(x, mask)


def _build(pair: Pair, shape: tuple[int, ...], train: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    c = _channels(pair.kind, shape)
    ours, theirs = pair.ours(c), pair.theirs(c)
    if pair.kind == "nhwc":  # the Keras-style layer builds its weights on first call
        with torch.no_grad():
            ours(torch.zeros(2, *shape[1:]))
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    if pair.twin:  # an act twin is Sequential(norm, act)
        (theirs[0] if isinstance(theirs, nn.Sequential) else theirs).load_state_dict(
            ours.state_dict()
        )
    ours.train(train)
    theirs.train(train)
    return ours, theirs


def _step(m: nn.Module, x: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    xi = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = _call(m, xi, mask)
    y.backward(torch.ones_like(y) + torch.linspace(0, 1, y.numel()).reshape(y.shape))
    grads = {"input": xi.grad}
    grads.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return y.detach(), grads  # type: ignore[return-value]


def _diffs(pair: Pair, shape: tuple[int, ...], layout: str, train: bool) -> dict[str, float]:
    ours, theirs = _build(pair, shape, train)
    out_d = grad_d = 0.0
    for seed in range(2):
        x = _input(pair, shape, layout, seed)
        y1, g1 = _step(ours, x, None)
        y2, g2 = _step(theirs, x, None)
        out_d = max(out_d, _rel(y1, y2))
        grad_d = max(grad_d, _max_diff(g1, g2))
    buf_d = _max_diff(dict(ours.named_buffers()), dict(theirs.named_buffers()))
    return {"out diff": out_d, "grad diff": grad_d, "buffer diff": buf_d}


def _timed_call(
    m: nn.Module, x: Tensor, mask: Tensor | None, direction: str
) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    """A forward (no grad) or forward + backward call of ``m`` with a fixed output gradient."""
    if direction == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                _call(m, x, mask)

        return fwd, None
    xi = x.detach().clone().requires_grad_()
    grad = torch.randn_like(_call(m, xi, mask))
    params = [p for p in m.parameters() if p.requires_grad]

    def clear() -> None:
        xi.grad = None
        for p in params:
            p.grad = None

    def fwd_bwd() -> None:
        _call(m, xi, mask).backward(grad)

    return fwd_bwd, clear


def clock() -> Callable[[], float]:
    """The timer of the comparisons: CPU time of the calling thread with one intra-op thread
    (all the work happens on it, and time the core spends on other processes is left out), wall
    time otherwise."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def compare_pair(
    pair: Pair,
    size: str = "small",
    *,
    train: bool = True,
    direction: str = "fwd+bwd",
    layout: str = "contiguous",
    reps: int = 7,
    check: bool = True,
) -> dict[str, Any]:
    """One grid cell: time ratio, ATen op counts and (twins, ``check``) the differences."""
    from normkit.bench.timing import measure_interleaved

    shape = SHAPES[pair.kind][size]
    row: dict[str, Any] = {
        "layer": pair.name,
        "size": size,
        "shape": "x".join(map(str, shape)),
        "layout": layout,
        "mode": ("train" if train else "eval") if pair.stateful else "-",
        "dir": direction,
        "vs": "twin" if pair.twin else "plain norm",
    }
    ours, theirs = _build(pair, shape, train)
    x = _input(pair, shape, layout, 7)
    mask = _mask(pair, shape)
    calls = {
        "ours": _timed_call(ours, x, mask, direction),
        "theirs": _timed_call(theirs, x, None, direction),
    }
    counts = {}
    for name, (fn, setup) in calls.items():
        if setup is not None:
            setup()
        counts[name] = sum(count_ops(fn).values())
    cpu = torch.get_num_threads() == 1
    t = measure_interleaved(calls, reps=reps, warmup=2, clock=clock())
    # one thread: medians of the thread's CPU time; else the fastest wall time of the rounds
    # (on a shared machine, load only adds wall time)
    ours_s, theirs_s = (
        (t["ours"].median, t["theirs"].median) if cpu else (t["ours"].min, t["theirs"].min)
    )
    row["normkit ms"] = ours_s * 1e3
    row["torch ms"] = theirs_s * 1e3
    row["ratio"] = ours_s / theirs_s
    row["ops"] = counts["ours"]
    row["torch ops"] = counts["theirs"]
    row["target"] = 1.10 if pair.twin else 1.30
    if pair.twin and check:
        row.update(_diffs(pair, shape, layout, train))
    return row


def run_compare(
    pairs: Sequence[Pair] = PAIRS,
    *,
    sizes: Sequence[str] = SIZES,
    reps: int = 7,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every cell of the grid: pairs × sizes × layouts × modes × directions."""
    cells = [
        (p, s, layout, train, d)
        for p in pairs
        for s in sizes
        for layout in p.layouts
        for train in ((True, False) if p.stateful else (True,))
        for d in ("fwd", "fwd+bwd")
    ]
    rows = []
    if not progress:
        for p, s, layout, train, d in cells:
            rows.append(compare_pair(p, s, train=train, direction=d, layout=layout, reps=reps))
        return rows
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("comparing", total=len(cells))
        for p, s, layout, train, d in cells:
            bar.update(task, description=f"{p.name} {s} {layout} {d}")
            rows.append(compare_pair(p, s, train=train, direction=d, layout=layout, reps=reps))
            bar.advance(task)
    return rows


# --------------------------------------------------------------------------- training steps


def _lab_cnn() -> tuple[nn.Module, Tensor, Tensor]:
    from normkit.examples.data import digits
    from normkit.examples.models import CNN

    torch.manual_seed(0)
    split = digits(0, "images")
    return CNN(16, norm="bn"), split.x_train[:64].float(), split.y_train[:64]


def _resnet18_style() -> tuple[nn.Module, Tensor, Tensor]:
    from normkit.examples.models import resnet_cnn

    g = torch.Generator().manual_seed(0)
    model = resnet_cnn((64, 128, 256, 512), blocks=2).train()
    return model, torch.randn(32, 3, 64, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


#: Whole-model training steps: (name, builder of (model, inputs, targets)).
MODELS: tuple[tuple[str, Callable[[], tuple[nn.Module, Tensor, Tensor]]], ...] = (
    ("lab CNN, digits 8x8, batch 64", _lab_cnn),
    ("ResNet-18-style CNN, 64x64, batch 32", _resnet18_style),
)


def _train_step(model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
        opt.step()

    return step


def run_model_steps(reps: int = 10) -> list[dict[str, Any]]:
    """Training-step time of each model with torch.nn norms vs after ``convert(model, "normkit")``."""
    from normkit.bench.timing import measure_interleaved
    from normkit.inference import convert

    rows = []
    for name, build in MODELS:
        model, x, target = build()
        theirs = convert(model, "torch")
        ours = convert(theirs, "normkit")
        calls = {"ours": (_train_step(ours, x, target), None)}
        calls["theirs"] = (_train_step(theirs, x, target), None)
        t = measure_interleaved(calls, reps=reps, warmup=2, clock=clock())
        rows.append(
            {
                "model": name,
                "normkit ms": t["ours"].median * 1e3,
                "torch ms": t["theirs"].median * 1e3,
                "ratio": t["ours"].median / t["theirs"].median,
                "target": 1.05,
            }
        )
    return rows


# --------------------------------------------------------------------------- the command


def _summary(rows: Sequence[dict[str, Any]], tolerance: float) -> tuple[bool, list[str]]:
    bad = [
        r
        for r in rows
        if max(r.get("out diff", 0.0), r.get("grad diff", 0.0), r.get("buffer diff", 0.0))
        > tolerance
    ]
    slow = [r for r in rows if r["ratio"] > r["target"]]
    extra_ops = [r for r in rows if "torch ops" in r and r["ops"] > r["torch ops"] + 2]
    lines = [
        f"{len(rows)} rows; {len(bad)} differ from torch.nn by more than {tolerance:g}; "
        f"{len(slow)} slower than their target; {len(extra_ops)} with more than torch.nn's "
        "ATen ops + 2"
    ]
    if rows:
        worst = max(rows, key=lambda r: r["ratio"])
        lines.append(
            f"worst ratio {worst['ratio']:.2f}x: {worst['layer']} {worst['size']} "
            f"{worst['layout']} {worst['mode']} {worst['dir']}"
        )
    return not bad, lines


def _main(args: argparse.Namespace) -> int:
    from normkit.bench.report import print_table, write_csv

    pairs = [p for p in PAIRS if not args.layers or p.name in args.layers]
    if args.layers and len(pairs) != len(set(args.layers)):
        known = [p.name for p in PAIRS]
        print(f"unknown --layers {sorted(set(args.layers) - set(known))}; expected some of {known}")
        return 2
    sizes = args.sizes or (("tiny", "small") if args.quick else SIZES)
    rows = run_compare(pairs, sizes=sizes, reps=args.reps, progress=True)
    print_table(
        rows,
        title="normkit vs torch.nn (float32; ratio = normkit / torch time, interleaved; ops = "
        "ATen ops per call; diffs = max |diff| / max(1, |torch|))",
    )
    ok, lines = _summary(rows, args.tolerance)
    print("\n".join(lines))
    if args.models:
        model_rows = run_model_steps(reps=args.reps)
        print_table(model_rows, title="training step: torch.nn norms vs convert(model, 'normkit')")
        rows = rows + [{"layer": r["model"], **r} for r in model_rows]
    if args.csv:
        print(f"wrote {len(rows)} rows to {write_csv(rows, args.csv)}")
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="check every normkit layer against its torch.nn twin (differences, time, ops)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reps", type=int, default=7, help="timing repetitions (median)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative difference allowed")
    p.add_argument("--quick", action="store_true", help="only the tiny and small sizes")
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=None, help="sizes to run")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help="only these layers")
    p.add_argument(
        "--models", action="store_true", help="also time whole training steps after convert()"
    )
    p.add_argument("--csv", default=None, metavar="PATH", help="also write all rows to this CSV")
    p.set_defaults(func=_main)
