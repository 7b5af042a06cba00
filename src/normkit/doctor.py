"""``normkit doctor``: train a model for a few steps under :func:`normkit.diagnostics.watch`,
run :func:`normkit.diagnostics.check_model`, print the findings and write a report.

``--model module:factory`` names a zero-argument callable returning the ``nn.Module`` (default:
the digits CNN of :mod:`normkit.examples.models`). Data: scikit-learn's bundled 8×8 digits
when the per-sample ``--input-shape`` holds 64 values (the default ``1,8,8``; ``64`` for MLPs),
random normal inputs otherwise (or with ``--data random``). A 2-D output ``(N, K)`` is trained
with cross-entropy (labels mod K), anything else with ``mean(output²)/2``. After training, the
last batch measures the loss's top Hessian eigenvalue against the learning rate and the
gradient noise (8 micro-batches). Files written under ``--out``: ``stats.csv`` (every layer ×
recorded step), ``gradient_flow.png`` and a self-contained ``report.html`` (one figure per
instrument). Exit code 1 when a finding has severity "error".

``normkit doctor --overhead [--quick]`` instead measures what leaving ``watch`` on costs (the
``diagnostics`` benchmark suite, also ``normkit bench --diagnostics``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normkit._optional import require

__all__ = ["add_parser", "load_factory", "run_doctor"]

DEFAULT_MODEL = "normkit.examples.models:digits_cnn"


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"package.module:factory"`` or ``"path/to/file.py:factory"`` → the callable."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(
            f"--model expects 'module:factory' or 'file.py:factory' (got {spec!r}), e.g. "
            f"{DEFAULT_MODEL}"
        )
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"--model: no such file {str(path)!r}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"--model: cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"--model: {mod_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"--model: {spec!r} is not callable (got {type(factory).__name__})")
    return factory


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-shape expects comma-separated ints such as 1,8,8 (got {text!r})"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"--input-shape needs positive sizes (got {text!r})")
    return shape


def _data(
    shape: tuple[int, ...], kind: str, n: int, seed: int
) -> tuple[Tensor, Tensor | None, str]:
    if kind == "digits" or (kind == "auto" and math.prod(shape) == 64):
        if math.prod(shape) != 64:
            raise ValueError(
                f"--data digits needs an input shape of 64 values such as 1,8,8 or 64 (got "
                f"{shape}); use --data random for other shapes"
            )
        require("sklearn", extra="doctor", feature="normkit doctor --data digits")
        from normkit.examples.data import digits_images

        x, y = digits_images()
        return x.reshape(-1, *shape), y, "digits (sklearn, 1797 images)"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), None, f"random normal {shape}"


def _loss(out: Tensor, labels: Tensor | None, seed: int) -> Tensor:
    if out.ndim == 2 and out.shape[1] > 1:
        k = out.shape[1]
        if labels is None:
            g = torch.Generator().manual_seed(seed)
            labels = torch.randint(0, k, (out.shape[0],), generator=g)
        return F.cross_entropy(out, labels.to(out.device) % k)
    return out.float().square().mean() / 2


def run_doctor(args: argparse.Namespace) -> int:
    """The ``normkit doctor`` command (see the module docstring); returns the exit code."""
    from rich.console import Console
    from rich.progress import Progress

    from normkit.diagnostics import check_model, render_findings, watch
    from normkit.diagnostics._report import html_report, print_report

    console = Console()
    if args.overhead:
        require("sklearn", extra="doctor", feature="normkit doctor --overhead")  # digits data
        from normkit.bench import print_table
        from normkit.diagnostics.bench import run_diagnostics_bench

        rows = run_diagnostics_bench(args.quick, device=args.device)
        print_table(rows, title="normkit doctor --overhead: cost of watch() per training step")
        return 0
    require("matplotlib", extra="doctor", feature="normkit doctor")  # it writes a figure
    torch.manual_seed(args.seed)
    model = load_factory(args.model)()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--model factory must return a torch.nn.Module (got {type(model).__name__})"
        )
    model = model.to(args.device)
    x_all, y_all, what = _data(
        args.input_shape, args.data, max(args.batch_size * 8, 512), args.seed
    )
    x_all = x_all.to(args.device)
    console.print(
        f"[bold]normkit doctor[/]: {type(model).__name__} from {args.model}; data: {what}; "
        f"{args.steps} steps of SGD(lr={args.lr}, momentum=0.9), batch {args.batch_size}, "
        f"recording every {args.every}"
    )
    static = check_model(model, x_all[: args.batch_size])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    n = x_all.shape[0] - args.batch_size
    model.train()
    with watch(model, every=args.every) as rec, Progress(console=console, transient=True) as bar:
        task = bar.add_task("training", total=args.steps)
        for i in range(args.steps):
            j = (i * args.batch_size) % max(n, 1)
            xb = x_all[j : j + args.batch_size]
            yb = None if y_all is None else y_all[j : j + args.batch_size]
            loss = _loss(model(xb), yb, args.seed + i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(task, advance=1, description=f"training (loss {loss.item():.3g})")
        with torch.no_grad():
            out = model(xb)  # (under no_grad: not a training step)
        if yb is None and out.ndim == 2 and out.shape[1] > 1:
            g = torch.Generator().manual_seed(args.seed)
            yb = torch.randint(0, out.shape[1], (out.shape[0],), generator=g)
        batch = (xb, torch.zeros(len(xb)) if yb is None else yb)
        seed = args.seed

        def loss_fn(out: Tensor, labels: Tensor) -> Tensor:
            return _loss(out, labels if out.ndim == 2 and out.shape[1] > 1 else None, seed)

        rec.curvature(loss_fn, batch, iters=30, tol=1e-3)
        if len(xb) >= 2:
            rec.gradient_noise(loss_fn, batch, groups=min(8, len(xb)))
    findings = rec.verdict()
    print_report(rec.recording(), findings, console=console)
    render_findings(static, title="normkit doctor: model checks (check_model)", console=console)
    out = Path(args.out)
    csv_path = rec.to_csv(out / "stats.csv")
    png_path = rec.plot(out / "gradient_flow.png")
    html_path = html_report(rec.recording(), out / "report.html", findings, extra=static)
    console.print(f"wrote {csv_path}, {png_path}, {html_path}")
    return 1 if any(f.severity == "error" for f in [*findings, *static]) else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="train a model a few steps under watch() and report gradient-flow and norm pitfalls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="module:factory or file.py:factory")
    p.add_argument(
        "--input-shape",
        type=_parse_shape,
        default=(1, 8, 8),
        help="per-sample input shape, e.g. 1,8,8 (default) or 64",
    )
    p.add_argument("--data", choices=("auto", "digits", "random"), default="auto")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--every", type=int, default=1, help="record every N-th step (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", default="doctor-report", help="output folder (default doctor-report)")
    p.add_argument(
        "--overhead", action="store_true", help="measure watch()'s cost instead (a benchmark)"
    )
    p.add_argument("--quick", action="store_true", help="with --overhead: fewer cases and reps")
    p.set_defaults(func=run_doctor)
