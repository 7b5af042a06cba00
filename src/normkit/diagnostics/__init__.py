"""Diagnostics: see gradient flow in your own model and get told when normalization is set up wrong.

- :func:`watch` → :class:`Recorder`: per-layer activation/gradient statistics during training,
  :meth:`Recorder.verdict` (vanishing/exploding gradients, dead ReLUs, saturated units,
  activation drift), :meth:`Recorder.plot`, :meth:`Recorder.to_html`.
- :func:`check_model`: static and one-batch checks for normalization pitfalls.
- :func:`render_findings` prints findings as a rich table.

>>> from normkit.diagnostics import watch
>>> with watch(model) as rec:
...     train(model)
>>> for f in rec.verdict():
...     print(f.severity, f.code, f.message, f.fix)
"""

from normkit.diagnostics._checks import check_model
from normkit.diagnostics._findings import SEVERITIES, Finding, Severity, render_findings
from normkit.diagnostics._modules import (
    activation_kind,
    is_bn_like,
    is_depth_layer,
    is_norm_like,
)
from normkit.diagnostics._recorder import METRICS, RECORD, LayerInfo, Recorder, watch
from normkit.diagnostics._verdict import Thresholds, diagnose

__all__ = [
    "METRICS",
    "RECORD",
    "SEVERITIES",
    "Finding",
    "LayerInfo",
    "Recorder",
    "Severity",
    "Thresholds",
    "activation_kind",
    "check_model",
    "diagnose",
    "is_bn_like",
    "is_depth_layer",
    "is_norm_like",
    "render_findings",
    "watch",
]
