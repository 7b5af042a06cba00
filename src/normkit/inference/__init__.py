"""Inference tools: fold batch norm into conv/linear layers, convert models between torch.nn and
normkit norms, and ``optimize(model, example_inputs)`` (fold + measured layout/backend choice,
checked against the original)."""

from normkit.inference.convert import TWINS, ConversionReport, Converted, Twin, convert
from normkit.inference.export import ExportReport, export_onnx
from normkit.inference.fold import (
    FoldableNorm,
    FoldedPair,
    FoldReport,
    NotFolded,
    fold_batchnorm,
    fold_into,
    foldable_norm_types,
    register_foldable_norm,
)
from normkit.inference.optimize import OptimizationError, OptimizeReport, optimize

__all__ = [
    "TWINS",
    "ConversionReport",
    "Converted",
    "ExportReport",
    "FoldReport",
    "FoldableNorm",
    "FoldedPair",
    "NotFolded",
    "OptimizationError",
    "OptimizeReport",
    "Twin",
    "convert",
    "export_onnx",
    "fold_batchnorm",
    "fold_into",
    "foldable_norm_types",
    "optimize",
    "register_foldable_norm",
]
