"""The update snapshot of :func:`~normkit.diagnostics.watch`: per layer, the weight norm before an
optimizer step, the norm of the step's change and the distance from the weights at the start.

The parameters of one device and dtype live as one flat vector: their values when watching
started (a copy) and a two-row buffer reused by every recorded step (no allocation per step:
fresh tensors of tens of MiB cost page faults on CPU). Before the step one ``torch.cat(out=)``
copies the weights into row 0 and one subtraction puts w − w₀ into row 1; after it, row 1
becomes the step's change. Norms are taken per layer over slices of the buffer (one reduction
for all of a layer's parameters of that device and dtype), so a step costs a few ops per layer
instead of a clone, a subtraction and three norms per parameter. On CPU, float32/float64, Numba
kernels (:mod:`~normkit.diagnostics._kernels`) take the norms in fewer passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normkit.diagnostics._measure import kernels, tensor_norm

__all__ = ["Snapshot", "Updates"]


_ONE_CALL = 1 << 18
"""Up to this many values of a device and dtype, the kernels take all parameters in one call
before the step and one after (after ``torch.cat`` copies); above, the norms of the weights
before the step are taken after it, from their copy, in one call per parameter that reads the
weights, the copy and the initial weights once (three reads instead of five)."""


def _flat(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().reshape(-1) for p in params]


class _Flat:
    """Parameters of one device and dtype laid out end to end: their initial values, the step's
    buffer (made on first use) and, per layer, its slice ``(layer, start, stop)``."""

    def __init__(self, named: list[tuple[str, Tensor]], init: Tensor) -> None:
        self.params = [p for _, p in named]
        self.init = init
        self.buf: Tensor | None = None
        self.spans: list[tuple[str, int, int]] = []
        self.span_of: list[int] = []  # per parameter, the index of its span
        pos = 0
        for layer, p in named:
            if self.spans and self.spans[-1][0] == layer:
                self.spans[-1] = (layer, self.spans[-1][1], pos + p.numel())
            else:
                self.spans.append((layer, pos, pos + p.numel()))
            self.span_of.append(len(self.spans) - 1)
            pos += p.numel()
        # the Numba kernels take float32/float64 CPU parameters
        ok = init.device.type == "cpu" and init.dtype in (torch.float32, torch.float64)
        self.kernels = kernels() if ok else None
        self.bounds = np.array([0, *(b for _, _, b in self.spans)], dtype=np.int64)

    def numpy_parts(self) -> list[tuple[Any, Any, Any]]:
        """Per parameter: NumPy views of its values, its initial values and its slice of the
        buffer's first row."""
        assert self.buf is not None
        init, old = self.init.numpy(), self.buf[0].numpy()
        parts, pos = [], 0
        for p in self.params:
            n = p.numel()
            parts.append((p.detach().reshape(-1).numpy(), init[pos : pos + n], old[pos : pos + n]))
            pos += n
        return parts


def _groups(named: list[tuple[str, Tensor]]) -> list[list[tuple[str, Tensor]]]:
    """``named`` split by (device, dtype), order kept within each part."""
    by: dict[tuple[torch.device, torch.dtype], list[tuple[str, Tensor]]] = {}
    for layer, p in named:
        by.setdefault((p.device, p.dtype), []).append((layer, p))
    return list(by.values())


class Snapshot:
    """One optimizer step in flight: the layout it uses and its norms before the step."""

    def __init__(self, flats: list[_Flat], before: list[Tensor | np.ndarray]) -> None:
        self.flats = flats
        # per flat (spans, 2): ‖w‖ and ‖w − w₀‖ per span; or from the kernels (spans, 3): their
        # squares and a column for Σ(Δw)²
        self.before = before

    @property
    def layers(self) -> list[str]:
        """The layer of each span, in order."""
        return [s[0] for f in self.flats for s in f.spans]


class Updates:
    """Keeps the initial weights of ``named`` ((layer, parameter) pairs, grouped by layer) and
    measures optimizer steps over any subset of them.

    >>> lin = torch.nn.Linear(3, 2)
    >>> up = Updates([("lin", lin.weight), ("lin", lin.bias)])
    >>> snap = up.before({id(lin.weight), id(lin.bias)})
    >>> with torch.no_grad():
    ...     _ = lin.weight.add_(1.0)
    >>> [norms] = up.after(snap)  # per span: ‖w‖, ‖w − w₀‖, ‖Δw‖
    >>> round(norms[2].item(), 4), snap.layers
    (2.4495, ['lin'])
    """

    def __init__(self, named: Sequence[tuple[str, Tensor]]) -> None:
        self._named = list(named)
        with torch.no_grad():
            full = [_Flat(g, torch.cat(_flat([p for _, p in g]))) for g in _groups(self._named)]
            init_sq: dict[str, float] = {}
            for f in full:
                for (layer, *_), n in zip(f.spans, self._span_norms(f.init, f), strict=True):
                    init_sq[layer] = init_sq.get(layer, 0.0) + float(n) ** 2
        self.init_sq = init_sq
        """‖w₀‖² per layer."""
        # id(param) → its initial values (a view of the full layout's flat vector)
        self._init_of: dict[int, Tensor] = {}
        for f in full:
            pos = 0
            for p in f.params:
                self._init_of[id(p)] = f.init[pos : pos + p.numel()]
                pos += p.numel()
        self._layouts = {tuple(range(len(named))): full}

    @staticmethod
    def _span_norms(row: Tensor, f: _Flat) -> list[Tensor]:
        return [tensor_norm(row[..., a:b], dim=-1) for _, a, b in f.spans]

    def _layout(self, key: tuple[int, ...]) -> list[_Flat]:
        flats = self._layouts.get(key)
        if flats is None:  # (a subset: its own copy of their initial values)
            named = [self._named[i] for i in key]
            flats = self._layouts[key] = [
                _Flat(g, torch.cat([self._init_of[id(p)] for _, p in g])) for g in _groups(named)
            ]
        return flats

    def before(self, ids: set[int]) -> Snapshot | None:
        """Copy the weights among ``ids`` (parameter ids; None if none is watched) before a
        step and take their norms."""
        key = tuple(i for i, (_, p) in enumerate(self._named) if id(p) in ids)
        if not key:
            return None
        flats = self._layout(key)
        norms: list[Tensor | np.ndarray] = []  # (the detached views need no no_grad())
        for f in flats:
            if f.buf is None:  # (one row for the per-parameter kernels: the old weights)
                rows = 1 if f.kernels is not None and f.init.numel() > _ONE_CALL else 2
                f.buf = f.init.new_empty((rows, f.init.numel()))
            if f.kernels is None:
                torch.cat(_flat(f.params), out=f.buf[0])
                torch.sub(f.buf[0], f.init, out=f.buf[1])
                norms.append(torch.stack(self._span_norms(f.buf, f)))
                continue
            sq = np.zeros((len(f.spans), 3))  # Σw², Σ(w − w₀)², then Σ(Δw)²
            torch.cat(_flat(f.params), out=f.buf[0])  # (torch's copy: multi-threaded)
            if f.init.numel() <= _ONE_CALL:
                f.kernels.span_snapshot(f.buf[0].numpy(), f.init.numpy(), f.bounds, sq)
            norms.append(sq)  # (large: all three sums after the step, from the copy)
        return Snapshot(flats, norms)

    def after(self, snap: Snapshot) -> list[Tensor]:
        """Per device and dtype, the flat ``(‖w‖, ‖w − w₀‖, ‖Δw‖)`` of each of its spans (in
        the order of :attr:`Snapshot.layers`): the norms before the step and of its change."""
        out = []
        for f, before in zip(snap.flats, snap.before, strict=True):
            assert f.buf is not None
            if isinstance(before, np.ndarray):  # (the kernels' squared sums)
                assert f.kernels is not None
                if f.init.numel() > _ONE_CALL:
                    # (imported here: importing the numba backend registers it, which only an
                    # installed numba may do; the kernels exist only then)
                    from normkit.backends.numba._runtime import threads

                    for span, (w, w0, old) in zip(f.span_of, f.numpy_parts(), strict=True):
                        with threads(w.shape[0]):  # (one thread for a small parameter)
                            before[span] += f.kernels.after_step(w, w0, old)
                else:
                    torch.cat(_flat(f.params), out=f.buf[1])
                    f.kernels.span_change(f.buf[1].numpy(), f.buf[0].numpy(), f.bounds, before)
                out.append(torch.from_numpy(np.sqrt(before, out=before).reshape(-1)))
                continue
            torch.cat(_flat(f.params), out=f.buf[1])
            delta = torch.stack(self._span_norms(f.buf[1].sub_(f.buf[0]), f))
            out.append(torch.cat([before, delta[:, None]], 1).reshape(-1))
        return out
