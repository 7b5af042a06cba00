"""Diagnostics: see gradient flow in your own model and get told when normalization is set up wrong.

- :func:`watch` → :class:`Recorder`: per-layer activation/gradient statistics during training,
  distance from initialization, a health timeline per normalization layer;
  :meth:`Recorder.curvature` and :meth:`Recorder.gradient_noise` on demand;
  :meth:`Recorder.verdict` (vanishing/exploding gradients, dead ReLUs, saturated units,
  activation drift, lagging BN statistics, lr above the curvature bound, batch too small for
  the gradient noise), :meth:`Recorder.plot`, :meth:`Recorder.to_html`.
- :class:`Recording`: a recorded run as data (what verdicts and reports read).
- :func:`check_model`: static and one-batch checks for normalization pitfalls.
- :func:`render_findings` prints findings as a rich table.

>>> from normkit.diagnostics import watch
>>> from normkit.examples.models import digits_cnn
>>> model = digits_cnn()
>>> with watch(model) as rec:
...     model(torch.randn(64, 1, 8, 8)).logsumexp(1).mean().backward()
>>> for f in rec.verdict():
...     print(f.severity, f.code, f.message, f.fix)
"""

from normkit.diagnostics._checks import check_model
from normkit.diagnostics._data import (
    METRICS,
    NORM_METRICS,
    Curvature,
    GradientNoise,
    LayerInfo,
    Recording,
)
from normkit.diagnostics._findings import SEVERITIES, Finding, Severity, render_findings
from normkit.diagnostics._instruments import gradient_noise, top_hessian_eigenvalue
from normkit.diagnostics._modules import (
    activation_kind,
    is_bn_like,
    is_depth_layer,
    is_norm_like,
)
from normkit.diagnostics._recorder import RECORD, Recorder, watch
from normkit.diagnostics._verdict import Thresholds, diagnose

__all__ = [
    "METRICS",
    "NORM_METRICS",
    "RECORD",
    "SEVERITIES",
    "Curvature",
    "Finding",
    "GradientNoise",
    "LayerInfo",
    "Recorder",
    "Recording",
    "Severity",
    "Thresholds",
    "activation_kind",
    "check_model",
    "diagnose",
    "gradient_noise",
    "is_bn_like",
    "is_depth_layer",
    "is_norm_like",
    "render_findings",
    "top_hessian_eigenvalue",
    "watch",
]
