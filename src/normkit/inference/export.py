"""Export to ONNX with the same numbers: fold, export with torch's dynamo exporter, check with
onnxruntime.

While ``torch.export`` or ``torch.onnx`` trace a model, every normkit layer resolves to the
backend built from standard torch ops (:func:`normkit.backends.resolve`), whatever backend it
was built with, so the graph holds operators every runtime knows (ONNX ``BatchNormalization``,
``LayerNormalization``, ``RMSNormalization`` from opset 23, ``GroupNormalization``, or their
decompositions) and no normkit custom op. Eval-mode semantics are exported: batch norms use
their running statistics, and the NaN guard of training is absent.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from normkit._optional import installed, require
from normkit.inference.fold import FoldReport, fold_batchnorm

__all__ = ["ExportReport", "export_onnx"]

# Largest |onnxruntime − eager| allowed, relative to max |eager| (float32: rtol 1e-5 as the
# issue's contract; half precision: the dtype's resolution).
_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-3,
}


@dataclass
class ExportReport:
    """What :func:`export_onnx` did: the fold report (``None`` with ``fold=False``), the ONNX
    operator histogram, the opset, and the largest difference onnxruntime showed (``None``
    with ``check=False``)."""

    path: Path
    opset: int
    operators: dict[str, int] = field(default_factory=dict)
    fold: FoldReport | None = None
    max_abs_error: float | None = None
    tolerance: float | None = None

    @property
    def nodes(self) -> int:
        """The number of nodes of the exported graph."""
        return sum(self.operators.values())

    def __str__(self) -> str:
        lines = [f"exported {self.path} (opset {self.opset}, {self.nodes} nodes)"]
        if self.fold is not None:
            lines.append(
                f"folded {len(self.fold.folded)} batch norm(s), kept {len(self.fold.skipped)}"
            )
        ops = ", ".join(f"{k} ×{v}" for k, v in sorted(self.operators.items()))
        lines.append(f"operators: {ops}")
        if self.max_abs_error is not None:
            lines.append(
                f"onnxruntime vs eager: max |diff| {self.max_abs_error:.3e} "
                f"(tolerance {self.tolerance:.3e})"
            )
        return "\n".join(lines)


def _flat(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    return []


def export_onnx(
    model: nn.Module,
    example: Tensor | tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    fold: bool = True,
    opset: int | None = None,
    check: bool = True,
    dynamic_batch: bool = False,
) -> ExportReport:
    """Export ``model`` (in eval mode) to an ONNX file and check it with onnxruntime.

    Steps: a copy of the model is put in eval mode; with ``fold=True`` its batch norms are
    folded into the preceding conv/linear layers (:func:`normkit.inference.fold_batchnorm`);
    ``torch.onnx.export(..., dynamo=True)`` writes ``path``; with ``check=True`` onnxruntime
    runs the file on ``example`` and a :class:`ValueError` is raised when any output differs
    from eager (the unfolded model) by more than the dtype's tolerance times the output's
    largest magnitude (float32: 1e-5).

    Args:
        model: the model; it is not modified.
        example: the example input (a tensor or a tuple of positional arguments).
        path: the ``.onnx`` file to write.
        fold: fold batch norms first.
        opset: the ONNX opset (default: 23, where ``RMSNormalization`` exists, when the
            installed onnx and onnxruntime support it; else the exporter's default).
        check: run onnxruntime and compare with eager.
        dynamic_batch: export dim 0 of every input as dynamic.

    Returns:
        An :class:`ExportReport` with the operator histogram and the measured difference.

    Needs ``onnx``, ``onnxscript`` and (for ``check``) ``onnxruntime``.

    >>> import tempfile, os
    >>> import normkit.nn as nkn
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), nkn.BatchNorm2d(8), torch.nn.ReLU())
    >>> with tempfile.TemporaryDirectory() as d:
    ...     report = export_onnx(model, torch.randn(2, 3, 16, 16), os.path.join(d, "m.onnx"))
    >>> report.operators.get("BatchNormalization", 0)
    0
    """
    for name in ("onnx", "onnxscript"):
        require(name, extra="export", feature="normkit.inference.export_onnx")
    args = example if isinstance(example, tuple) else (example,)
    eager_model = copy.deepcopy(model).eval()
    target = eager_model
    fold_report = None
    if fold:
        target, fold_report = fold_batchnorm(copy.deepcopy(eager_model), return_report=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = None
    if dynamic_batch:
        dynamic = tuple(
            {0: torch.export.Dim("batch")} if isinstance(a, Tensor) else None for a in args
        )
    # with dynamo=True the exporter always returns its program
    program = cast(
        torch.onnx.ONNXProgram,
        torch.onnx.export(
            target,
            args,
            dynamo=True,
            opset_version=opset if opset is not None else _default_opset(),
            dynamic_shapes=dynamic,
            verbose=False,
            optimize=True,
        ),
    )
    program.save(str(path))
    proto = program.model_proto
    ops = Counter(node.op_type for node in proto.graph.node)
    used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = ExportReport(path, int(used_opset), dict(ops), fold_report)
    if check:
        _check(report, eager_model, args)
    return report


def _default_opset() -> int | None:
    """23 (ONNX ``RMSNormalization``) when onnx and the installed onnxruntime know it (1.22+),
    else the exporter's default."""
    import onnx

    if onnx.defs.onnx_opset_version() < 23 or not installed("onnxruntime"):
        return None
    import onnxruntime as ort  # type: ignore[import-untyped]

    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    return 23 if (major, minor) >= (1, 22) else None


def _check(report: ExportReport, eager_model: nn.Module, args: tuple[Any, ...]) -> None:
    import numpy as np

    ort = require("onnxruntime", extra="export", feature="export_onnx(check=True)")
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    tensors = [a for a in args if isinstance(a, Tensor)]
    feeds = {}
    for inp, t in zip(session.get_inputs(), tensors, strict=False):
        arr = t.detach().cpu()
        feeds[inp.name] = (arr.float() if arr.dtype == torch.bfloat16 else arr).numpy()
    got = session.run(None, feeds)
    with torch.no_grad():
        want = _flat(eager_model(*args))
    if len(got) != len(want):
        raise ValueError(
            f"the ONNX model has {len(got)} outputs, the eager model {len(want)}; export "
            "changed the model's outputs"
        )
    worst, tol = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        w64 = w.detach().double().cpu().numpy()
        err = float(np.abs(np.asarray(g, dtype=np.float64) - w64).max()) if w64.size else 0.0
        scale = float(np.abs(w64).max()) if w64.size else 0.0
        bound = _RTOL.get(w.dtype, 1e-5) * max(scale, 1.0)
        worst, tol = max(worst, err), max(tol, bound)
        if err > bound:
            raise ValueError(
                f"onnxruntime's output differs from eager by {err:.3e} (> {bound:.3e}, the "
                f"{w.dtype} tolerance); the exported graph does not compute the same function "
                f"(operators: {report.operators})"
            )
    report.max_abs_error, report.tolerance = worst, tol
