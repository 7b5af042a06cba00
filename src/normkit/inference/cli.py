"""``normkit fold MODEL_FILE OUT_FILE``: fold the batch norms of a saved model.

Two input forms:

* a whole pickled module (``torch.save(model, path)``): unpickling runs arbitrary code, so it
  is loaded only with an explicit ``--trust``;
* a state_dict (``torch.save(model.state_dict(), path)``) plus ``--factory module:function``
  that builds the (unfolded) architecture; loaded with ``weights_only=True``, no ``--trust``.

``--onnx OUT.onnx`` also exports the folded model (:func:`normkit.inference.export_onnx`,
checked with onnxruntime on the ``--input-shape`` input).

OUT_FILE receives the folded module (``torch.save``; load it with ``weights_only=False``) or,
with ``--state-dict``, only its state_dict — which loads into
``fold_batchnorm(factory().eval())`` because folding changes the same modules every time. A table
of folded / kept norms is printed; ``--input-shape`` also runs both models on a random input and
prints the largest difference.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normkit.inference.fold import FoldReport, fold_batchnorm

__all__ = ["add_parser", "load_model"]


def _factory(spec: str) -> Callable[[], nn.Module]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise SystemExit(f"--factory must look like 'package.module:function' (got {spec!r})")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise SystemExit(f"--factory {spec!r} is not callable")
    return obj


def load_model(path: str | Path, *, trust: bool = False, factory: str | None = None) -> nn.Module:
    """Load a model for folding: a pickled module (``trust=True``) or a state_dict + factory."""
    if factory is not None:
        model = _factory(factory)()
        if not isinstance(model, nn.Module):
            raise SystemExit(f"--factory {factory!r} returned {type(model).__name__}, not a module")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, nn.Module):
            raise SystemExit(f"{path} holds a whole module; drop --factory and pass --trust")
        model.load_state_dict(state)
        return model
    if not trust:
        raise SystemExit(
            f"{path}: loading a pickled module runs code from the file; pass --trust if you "
            "trust it, or save a state_dict and pass --factory module:function instead"
        )
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, nn.Module):
        raise SystemExit(
            f"{path} holds a {type(model).__name__}, not an nn.Module; for a state_dict pass "
            "--factory module:function"
        )
    return model


def _print_report(report: FoldReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"normkit fold: {len(report.folded)} folded, {len(report.skipped)} kept")
    table.add_column("norm")
    table.add_column("result")
    table.add_column("detail")
    for p in report.folded:
        act = f" (kept activation {p.activation})" if p.activation else ""
        table.add_row(p.norm, "[green]folded[/]", f"into {p.layer}{act}")
    for s in report.skipped:
        table.add_row(s.norm, "[yellow]kept[/]", s.reason)
    Console().print(table)
    for name, why in report.untraceable.items():
        Console().print(
            f"[dim]fx could not trace {name} ({why}); matched its children by structure"
        )


def _main(args: argparse.Namespace) -> int:
    model = load_model(args.model_file, trust=args.trust, factory=args.factory)
    model.eval()
    folded, report = fold_batchnorm(model, return_report=True)
    _print_report(report)
    if args.input_shape:
        shape = tuple(int(s) for s in args.input_shape.split(","))
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            err = (folded(x).double() - model(x).double()).abs().max().item()
        print(f"max |folded − original| on a random {shape} input: {err:.3e}")
    out = Path(args.out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(folded.state_dict() if args.state_dict else folded, out)
    print(f"wrote {'state_dict' if args.state_dict else 'folded module'} to {out}")
    if args.onnx:
        if not args.input_shape:
            raise SystemExit("--onnx needs --input-shape (the example input the export traces)")
        from normkit.inference.export import export_onnx

        print(export_onnx(folded, x, args.onnx, fold=False))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fold",
        help="fold BatchNorm into the preceding conv/linear layers of a saved model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_file", help="torch.save'd module (with --trust) or state_dict")
    p.add_argument("out_file", help="where to write the folded model")
    p.add_argument(
        "--trust", action="store_true", help="allow unpickling a whole module (runs its code)"
    )
    p.add_argument(
        "--factory",
        default=None,
        metavar="MODULE:FUNCTION",
        help="build the architecture, then load MODEL_FILE as its state_dict (weights only)",
    )
    p.add_argument(
        "--state-dict", action="store_true", help="write only the folded model's state_dict"
    )
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="N,C,H,W",
        help="check folded vs original on a random input of this shape",
    )
    p.add_argument(
        "--onnx",
        default=None,
        metavar="OUT.onnx",
        help="also export the folded model to ONNX and check it with onnxruntime "
        "(needs --input-shape and normkit[export])",
    )
    p.set_defaults(func=_main)
