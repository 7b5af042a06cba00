"""Where :class:`~normkit.diagnostics.Recorder` keeps its numbers.

A recorded step's measurements stay on their device as tensors (0-d statistics and small
vectors; no hook synchronises an accelerator). When read, or once :data:`MAX_PENDING`
measurements wait, they go to the host together, one ``torch.cat`` per device, and are turned
into the metrics in float64, in one pass of Python over many recorded steps (Python run
between a training step's kernels costs 3-5x what it costs in a loop of its own). The metrics
go into three typed columns (step, metric id, value): no per-value Python object for the
garbage collector to scan.
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from normkit.diagnostics._data import values_by_spec

__all__ = ["Store"]

DEAD_STD = 1e-3  # a BN channel whose output std is below this is dead
MAX_PENDING = 4096
"""Pending measurements after which a recorded step converts them (bounds the memory and the
objects they hold: ~2 MB)."""

#: What a pending entry measured: a layer's output (``act``), the gradient w.r.t. it
#: (``grad_out``), parameter gradients (``grad``), a normalization layer (``norm``) or an
#: optimizer step (``update``).
Kind = Literal["act", "grad_out", "grad", "norm", "update"]


def _to_host(ts: list[Tensor]) -> list[float]:
    """The values of ``ts`` (flattened, in order) as floats, copied once per device."""
    flat = [t.reshape(-1) for t in ts]
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(flat):
        by_device[t.device].append(i)
    if len(by_device) == 1:
        return torch.cat(flat).tolist()
    parts: list[list[float]] = [[] for _ in flat]
    for idx in by_device.values():
        vals = torch.cat([flat[i] for i in idx]).tolist()
        for i in idx:
            n = flat[i].numel()
            parts[i], vals = vals[:n], vals[n:]
    return [v for p in parts for v in p]


class Store:
    """Pending measurements (:meth:`add`) and the stored metrics (:meth:`put`,
    :meth:`values`)."""

    def __init__(self) -> None:
        # pending: (kind, key, step, meta, how many tensors it owns) and the tensors
        self._entries: list[tuple[Kind, str, int, Any, int]] = []
        self._tensors: list[Tensor] = []
        self._step = array("q")
        self._id = array("q")
        self._val = array("d")
        self._ids: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        """How many values are stored (pending ones not counted)."""
        return len(self._val)

    @property
    def pending(self) -> int:
        """How many measurements wait for :meth:`flush`."""
        return len(self._entries)

    def add(self, kind: Kind, key: str, step: int, meta: Any, tensors: list[Tensor]) -> None:
        """Keep ``tensors`` (a measurement of ``key`` at ``step``) until :meth:`flush`."""
        self._entries.append((kind, key, step, meta, len(tensors)))
        self._tensors += tensors

    def put(self, step: int, metric: str, key: str, value: float) -> None:
        """Store one metric value."""
        i = self._ids.get((metric, key))
        if i is None:
            i = self._ids[(metric, key)] = len(self._ids)
        self._step.append(step)
        self._id.append(i)
        self._val.append(value)

    def values(self) -> dict[tuple[str, str], dict[int, float]]:
        """``{(metric, key): {step: value}}`` of everything stored."""
        by_id = values_by_spec(self._id, self._step, self._val)
        return {spec: by_id[i] for spec, i in self._ids.items() if i in by_id}

    def flush(self, init_sq: dict[str, float]) -> None:
        """Read the pending measurements to the host and store them as metrics (``init_sq``:
        ‖w₀‖² per layer, for the distance from the start)."""
        if not self._entries:
            return
        entries, tensors = self._entries, self._tensors
        self._entries, self._tensors = [], []
        lens = [t.numel() for t in tensors]
        flat = _to_host(tensors)
        pos = ti = 0
        grads: dict[tuple[int, str], dict[int, float]] = {}  # per step and layer: per param
        for kind, key, step, meta, nt in entries:
            vals = []
            for n in lens[ti : ti + nt]:
                vals.append(flat[pos : pos + n])
                pos += n
            ti += nt
            if kind == "act":
                self._put_act(step, key, meta, vals)
            elif kind == "grad_out":
                self.put(step, "grad_out_norm", key, vals[0][0])
            elif kind == "grad":  # (a second backward's gradient replaces the first's)
                grads.setdefault((step, key), {})[meta] = vals[0][0] ** 2
            elif kind == "norm":
                self._put_norm(step, key, meta, vals)
            else:
                self._put_update(step, meta, [v for part in vals for v in part], init_sq)
        for (step, layer), sq in grads.items():
            self.put(step, "grad_norm", layer, math.sqrt(sum(sq.values())))

    def _put_act(self, step: int, key: str, meta: Any, vals: list[list[float]]) -> None:
        n, units, act, is_norm = meta
        total, norm, lo, hi = (v[0] for v in vals[:4])
        mean = total / n
        self.put(step, "act_mean", key, mean)
        self.put(step, "act_std", key, math.sqrt(max(norm**2 / n - mean**2, 0.0)))
        self.put(step, "act_min", key, lo)
        self.put(step, "act_max", key, hi)
        if act == "relu":  # a unit is live if its largest value is not 0
            self.put(step, "dead_frac", key, 1.0 - int(np.count_nonzero(vals[4])) / units)
        elif act is not None:
            self.put(step, "saturated_frac", key, vals[4][0] / n)
        if is_norm:
            self.put(step, "norm_out_rms", key, norm / math.sqrt(n))

    def _put_norm(self, step: int, key: str, meta: Any, vals: list[list[float]]) -> None:
        n, c, has_weight, eps = meta
        if not c:
            if has_weight:
                self.put(step, "gamma_min", key, min(vals[0]))
                self.put(step, "gamma_max", key, max(vals[0]))
            self.put(step, "norm_in_rms", key, vals[-1][0] / math.sqrt(n))
            return
        # (γ,) running mean, running var, batch mean, Σ(x − mean)² per channel
        snap, mean, dev2 = vals
        w = snap[: len(snap) - 2 * c]
        rm, rv = snap[len(w) : len(w) + c], snap[len(w) + c :]
        if has_weight:
            self.put(step, "gamma_min", key, min(w))
            self.put(step, "gamma_max", key, max(w))
        m = n // c  # values per channel
        var = [d / m for d in dev2]
        rms = math.sqrt(sum(v + u * u for v, u in zip(var, mean, strict=True)) / c)
        self.put(step, "norm_in_rms", key, rms)
        lag, dead = 0.0, 0
        for i in range(c):
            sb, sr = math.sqrt(var[i] + eps), math.sqrt(rv[i] + eps)
            lag += (sb / sr - 1.0) ** 2 + ((mean[i] - rm[i]) / sr) ** 2
            gamma = abs(w[i]) if len(w) == c else 1.0
            dead += gamma * math.sqrt(var[i]) / sb < DEAD_STD
        self.put(step, "bn_stat_lag", key, math.sqrt(lag / c))
        self.put(step, "bn_dead_frac", key, dead / c)

    def _put_update(
        self, step: int, layers: list[str], norms: list[float], init_sq: dict[str, float]
    ) -> None:
        """Per layer, from its spans' (‖w‖, ‖w − w₀‖, ‖Δw‖): the weight norm before the step,
        ‖Δw‖/‖w‖ and ‖w − w₀‖/‖w₀‖."""
        sq: dict[str, list[float]] = {}
        for i, layer in enumerate(layers):
            acc = sq.setdefault(layer, [0.0, 0.0, 0.0])
            for j in range(3):
                acc[j] += norms[3 * i + j] ** 2
        for layer, (w2, d2, u2) in sq.items():
            w, d, u, w0 = map(math.sqrt, (w2, d2, u2, init_sq[layer]))
            self.put(step, "weight_norm", layer, w)
            self.put(step, "update_ratio", layer, u / w if w > 0 else math.inf)
            self.put(step, "init_distance", layer, d / w0 if w0 > 0 else math.inf)
