"""What a recorded run is, as plain data: the recorder writes it, verdicts and reports read it.

:class:`Recording` holds the per-layer values of every recorded step and the results of the
on-demand instruments (:class:`Curvature`, :class:`GradientNoise`); it knows nothing of hooks,
so :mod:`~normkit.diagnostics._verdict` and :mod:`~normkit.diagnostics._report` depend on it
and not on the recorder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "METRICS",
    "NORM_METRICS",
    "Curvature",
    "GradientNoise",
    "LayerInfo",
    "Recording",
    "as_recording",
]

ActivationKind = Literal["relu", "sigmoid", "tanh"]

NORM_METRICS: tuple[str, ...] = (
    "norm_in_rms",
    "norm_out_rms",
    "gamma_min",
    "gamma_max",
    "bn_stat_lag",
    "bn_dead_frac",
)
"""Per normalization layer and recorded step: RMS of its input and of its output; smallest and
largest γ (the affine weight); for batch norms in training mode the lag of the running
statistics (see :data:`METRICS`) and the fraction of dead channels."""

METRICS: tuple[str, ...] = (
    "act_mean",
    "act_std",
    "act_min",
    "act_max",
    "dead_frac",
    "saturated_frac",
    "grad_out_norm",
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "init_distance",
    *NORM_METRICS,
)
"""Per layer and recorded step: activation mean/std/min/max of the layer's output; fraction of
dead units (ReLU layers: channels that are ≤ 0 for every sample and position of the batch);
fraction of saturated outputs (sigmoid outside [0.01, 0.99], tanh with |y| > 0.99); L2 norm of
the gradient w.r.t. the layer's output; L2 norm of the gradient of the layer's own parameters;
L2 norm of those parameters before the optimizer step, ‖Δw‖/‖w‖ of that step and
‖w − w₀‖/‖w₀‖, the distance from the weights ``w₀`` the layer had when :func:`watch` started.

Normalization layers add :data:`NORM_METRICS`. ``bn_stat_lag`` is the RMS difference, on the
recorded batch, between the layer's eval-mode and train-mode normalized outputs (before γ, β):
√(mean_c[(σ_B/σ_R − 1)² + ((μ_B − μ_R)/σ_R)²]) with batch moments μ_B, σ_B² and running moments
μ_R, σ_R² (read before this step updates them), σ = √(var + ε). 0 when the running statistics
match the batch, 1 when eval-mode outputs are off by one standard deviation. ``bn_dead_frac``:
channels whose output has a standard deviation |γ|·σ_B/√(σ_B² + ε) below 1e-3 (zero γ or a
constant input)."""


@dataclass(frozen=True)
class LayerInfo:
    """A watched leaf module: ``name`` (qualified; a module called twice in one forward appears
    again as ``name#2``), ``kind`` (class name), ``depth`` (conv/linear-like, see
    :func:`normkit.diagnostics.is_depth_layer`), ``activation`` (relu/sigmoid/tanh or None)
    and ``norm`` (``"batch"`` for batch norms with running statistics, ``"norm"`` for other
    normalization layers, None otherwise)."""

    name: str
    kind: str
    depth: bool
    activation: ActivationKind | None
    norm: Literal["batch", "norm"] | None = None


@dataclass(frozen=True)
class Curvature:
    """The top Hessian eigenvalue of the loss at one step and the learning-rate bound it sets.

    ``eigenvalue`` λ (largest in magnitude, by power iteration on Hessian-vector products),
    ``iterations`` used, ``step`` (the recorded step count when measured), the optimizer's
    ``lr`` and ``momentum`` β (None without an optimizer), and ``bound`` = 2(1 + β)/λ: gradient
    descent with heavy-ball momentum β on the quadratic model of the loss diverges along the top
    eigenvector when lr > 2(1 + β)/λ (2/λ without momentum; Cohen et al. 2021, "Gradient descent
    on neural networks typically occurs at the edge of stability")."""

    eigenvalue: float
    iterations: int
    step: int
    lr: float | None
    momentum: float
    bound: float


@dataclass(frozen=True)
class GradientNoise:
    """Gradient signal-to-noise from ``groups`` micro-batch gradients of one batch of ``batch``
    samples (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

    With micro-batch gradients g₁…g_M (each of b = batch/M samples), their mean ḡ and variance
    S = Σ‖gᵢ − ḡ‖²/(M − 1), the batch gradient's noise variance is S/M and its signal
    ‖G‖² ≈ ‖ḡ‖² − S/M (unbiased). ``snr`` = ‖G‖²/(S/M) per layer (``layers``) and over all
    parameters (``total_snr``); below 1 the batch gradient is mostly noise. ``noise_scale`` is
    the simple noise scale B = b·S/‖G‖², the batch size at which noise and signal are equal
    (inf when the signal estimate is ≤ 0)."""

    step: int
    batch: int
    groups: int
    layers: Mapping[str, float]
    total_snr: float
    noise_scale: float


class HasRecording(Protocol):
    def recording(self) -> Recording: ...


_HIST_BINS = 40


def histogram(sample: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Counts in 40 equal bins over [lo, hi] (the last bin closed), as torch.histc, by
    bucketize + bincount: deterministic, so it also runs under
    torch.use_deterministic_algorithms(True) (torch.histc refuses to on CUDA), no device sync."""
    unit = torch.linspace(0, 1, _HIST_BINS + 1, device=sample.device, dtype=sample.dtype)
    inner = lo + (hi - lo) * unit[1:-1]
    idx = torch.bucketize(sample.flatten(), inner, right=True)
    return torch.bincount(idx, minlength=_HIST_BINS)


@dataclass
class Recording:
    """A recorded run as data: ``steps`` (recorded step indices), ``layers`` (in execution
    order), ``infos`` (:class:`LayerInfo` by layer), ``values`` (``{(metric, layer): {step:
    value}}``), activation ``samples`` for histograms, ``curvature`` and ``noise`` results in
    the order measured, per batch norm the values per channel it normalizes (``bn_counts``)
    and the steps its running statistics take to warm up (``bn_warmup``), ``every`` and the
    ``model_name``."""

    steps: list[int]
    layers: list[str]
    infos: dict[str, LayerInfo]
    values: dict[tuple[str, str], dict[int, float]]
    samples: dict[str, list[tuple[int, Tensor]]] = field(default_factory=dict)
    curvature: list[Curvature] = field(default_factory=list)
    noise: list[GradientNoise] = field(default_factory=list)
    bn_counts: dict[str, int] = field(default_factory=dict)
    bn_warmup: dict[str, int] = field(default_factory=dict)
    every: int = 1
    model_name: str = ""

    @property
    def depth_layers(self) -> list[str]:
        """The conv/linear-like layers among :attr:`layers` (input side first)."""
        return [n for n in self.layers if self.infos[n].depth and "#" not in n]

    @property
    def norm_layers(self) -> list[str]:
        """The normalization layers among :attr:`layers`."""
        return [n for n in self.layers if self.infos[n].norm is not None]

    def info(self, layer: str) -> LayerInfo:
        """What :class:`LayerInfo` says about ``layer``."""
        try:
            return self.infos[layer]
        except KeyError:
            raise KeyError(
                f"no watched layer named {layer!r}; watched layers: {self.layers}"
            ) from None

    def recorded(self, metric: str, layer: str) -> dict[int, float]:
        """``{step: value}`` of one metric for one layer, only where it was recorded."""
        _check_metric(metric)
        return dict(self.values.get((metric, layer), {}))

    def series(self, metric: str, layers: Iterable[str] | None = None) -> dict[str, list[float]]:
        """``{layer: [value at each of self.steps]}`` for one of :data:`METRICS`; ``nan`` where
        the value was not recorded (no backward, no optimizer step, not that kind of layer).
        Layers without any value for the metric are left out unless named in ``layers``."""
        _check_metric(metric)
        out: dict[str, list[float]] = {}
        for n in self.layers if layers is None else list(layers):
            vals = self.values.get((metric, n))
            if vals or layers is not None:
                vals = vals or {}
                out[n] = [vals.get(s, math.nan) for s in self.steps]
        return out

    def histograms(self) -> dict[str, list[tuple[int, list[float], float, float]]]:
        """Activation histograms ``(step, counts, low, high)`` per layer: the first recorded
        step and the latest histogram step."""
        out: dict[str, list[tuple[int, list[float], float, float]]] = {}
        for k, hs in self.samples.items():
            out[k] = []
            for step, sample in hs:
                lo, hi = torch.aminmax(sample)
                out[k].append((step, histogram(sample, lo, hi).tolist(), float(lo), float(hi)))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Long-format records ``{"step", "layer", "kind", <metric>: value, ...}`` — one per
        layer and recorded step that has any value."""
        rows = []
        for step in self.steps:
            for layer in self.layers:
                vals = {m: self.values.get((m, layer), {}).get(step, math.nan) for m in METRICS}
                if any(not math.isnan(v) for v in vals.values()):
                    rows.append({"step": step, "layer": layer, "kind": self.infos[layer].kind})
                    rows[-1].update(vals)
        return rows


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def as_recording(run: Recording | HasRecording) -> Recording:
    """``run`` itself, or the :class:`Recording` of a recorder."""
    return run if isinstance(run, Recording) else run.recording()


def values_by_spec(
    ids: Sequence[int] | np.ndarray, steps: Sequence[int] | np.ndarray, vals: Sequence[float]
) -> dict[int, dict[int, float]]:
    """``{spec id: {step: value}}`` from three parallel columns; a later value of the same spec
    and step replaces an earlier one."""
    ids_a, steps_a = np.asarray(ids, dtype=np.int64), np.asarray(steps, dtype=np.int64)
    vals_a = np.asarray(vals, dtype=np.float64)
    order = np.lexsort((steps_a, ids_a))  # by id, then step; stable: recorded order kept
    ids_a, steps_a, vals_a = ids_a[order], steps_a[order], vals_a[order]
    out: dict[int, dict[int, float]] = {}
    cuts = np.flatnonzero(ids_a[1:] != ids_a[:-1]) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ids_a)].tolist(), strict=True):
        if a < b:
            out[int(ids_a[a])] = dict(zip(steps_a[a:b].tolist(), vals_a[a:b].tolist(), strict=True))
    return out
