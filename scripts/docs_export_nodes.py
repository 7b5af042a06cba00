"""Node counts of ONNX exports: a model built from torch.nn layers against the same model with
normkit layers (``normkit.inference.convert``), exported with ``normkit.inference.export_onnx``;
prints the rows of the table on docs/benchmarks/index.md.

    python scripts/docs_export_nodes.py
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

import torch
from torch import nn

import normkit.nn as nkn
from normkit.examples.models import resnet_cnn
from normkit.inference import convert, export_onnx


def _block(norm: type[nn.Module], rms: type[nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), norm(64), nn.GELU(), nn.Linear(64, 64), rms(64))


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the exporter logs every torchvision op it skips
    torch.manual_seed(0)
    theirs = resnet_cnn().eval()
    converted = convert(theirs, "normkit")
    ours = (converted[0] if isinstance(converted, tuple) else converted).eval()
    a, b = _block(nn.LayerNorm, nn.RMSNorm).eval(), _block(nkn.LayerNorm, nkn.RMSNorm).eval()
    b.load_state_dict(a.state_dict())
    cases = [
        ("ResNet-style CNN", theirs, ours, torch.randn(2, 3, 64, 64), (False, True)),
        ("MLP block (LayerNorm, RMSNorm)", a, b, torch.randn(16, 64), (False,)),
    ]
    with tempfile.TemporaryDirectory() as d:
        for name, t, n, x, folds in cases:
            for fold in folds:
                rt = export_onnx(t, x, os.path.join(d, "t.onnx"), fold=fold)
                rn = export_onnx(n, x, os.path.join(d, "n.onnx"), fold=fold)
                bn = rn.operators.get("BatchNormalization", 0)
                print(
                    f"| {name} | {'yes' if fold else 'no'} | {rt.nodes} | {rn.nodes} | {bn} | "
                    f"{rn.max_abs_error:.1e} |"
                )


if __name__ == "__main__":
    main()
