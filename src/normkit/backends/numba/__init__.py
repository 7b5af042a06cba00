"""The ``numba`` backend: fused, parallel CPU kernels (optional extra ``normkit[fast]``).

One module per op family (:mod:`~normkit.backends.numba.batch_norm`,
:mod:`~normkit.backends.numba.layer_norm`, :mod:`~normkit.backends.numba.residual`,
:mod:`~normkit.backends.numba.group_norm`, :mod:`~normkit.backends.numba.transformer`), each
kernel entry points plus custom ops built by :func:`normkit.backends.numba._custom_op.define`
(``torch.compile``/``torch.export`` see an opaque op with a fake implementation and an autograd
formula); the kernels live in :mod:`normkit.backends.numba.kernels`, one module per family. numba itself is imported by the first kernel call
(:func:`normkit.backends.numba._runtime.kernels`), not by ``import normkit``.

Supported: CPU, float32/float64, ``layer_norm``, ``rms_norm``, ``add_layer_norm``,
``add_rms_norm`` (rows of the trailing dims), ``batch_norm_train``/``batch_norm_eval`` (any
feature axis; contiguous or channels_last), ``group_norm``/``instance_norm`` (contiguous or
channels_last), ``rms_norm_cast`` (the float32/float64 parity presets, bit for bit). float16/bfloat16 run in float32; other devices and empty inputs are declined by
:func:`supports`, so ``backend="auto"`` falls back to ``torch``.

**Where auto takes numba**: where the measured table of :mod:`normkit.backends.registry` says
numba beat torch (``normkit tune`` re-measures it). :func:`prefers` is the fallback for devices
the table has no row for: tensors of at least :data:`MIN_NUMEL` elements in a layout the
kernels stream (contiguous, or channels_last for batch/group norm); below that, a parallel
kernel's fixed costs (custom-op dispatch, waking OpenMP workers that went to sleep: several ms
after an idle pause) outweigh the bandwidth win.

**JIT cache.** Kernels compile on first use per dtype (seconds) and are cached on disk:
``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/normkit/numba`` (``~/.cache/...``). Later
processes load them in well under a second. :func:`warm_up` compiles/loads everything at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from normkit.backends.numba import batch_norm, group_norm, layer_norm, residual, transformer
from normkit.backends.numba._cache import cache_dir
from normkit.backends.numba._tensors import is_channels_last
from normkit.backends.registry import Backend, register

__all__ = ["BACKEND", "MIN_NUMEL", "OUT_OPS", "cache_dir", "prefers", "supports", "warm_up"]

#: Smallest input (elements) for which ``"auto"`` prefers numba; see the module docstring.
MIN_NUMEL = 1 << 20

_DTYPES = (torch.float32, torch.float64)
_CHANNEL_OPS = ("batch_norm_train", "batch_norm_eval", "group_norm")
_CAST_OPS = ("rms_norm_cast",)


def _upcast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` in float32 for float16/bfloat16 inputs and cast results back (autograd-aware).

    Statistics never accumulate in half precision; ``"auto"`` does not pick numba for these
    dtypes (torch does the same upcast), but an explicit ``backend="numba"`` gives right answers.
    """

    def wrapped(x: Tensor, *args: Any) -> Any:
        if x.dtype in _DTYPES:
            return fn(x, *args)
        low = x.dtype
        args = tuple(a.float() if isinstance(a, Tensor) and a.dtype == low else a for a in args)
        out = fn(x.float(), *args)
        if isinstance(out, tuple):
            return tuple(
                o.to(low) if o.is_floating_point() and o.ndim == x.ndim else o for o in out
            )
        return out.to(low)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


#: Forward entry points writing into caller-provided outputs (``out=[y]`` or ``[y, sum]``),
#: laid out like the input, float32/float64 only, no autograd. Used by ``normkit bench`` to
#: time reused-output forwards; ``normkit.functional.add_layer_norm(..., out=...)`` uses them.
OUT_OPS = {
    "layer_norm": layer_norm.layer_norm_out,
    "rms_norm": layer_norm.rms_norm_out,
    "add_layer_norm": residual.add_layer_norm_out,
    "add_rms_norm": residual.add_rms_norm_out,
    "batch_norm_train": batch_norm.batch_norm_train_out,
    "batch_norm_eval": batch_norm.batch_norm_eval_out,
    "group_norm": group_norm.group_norm_out,
}


def supports(op: str, x: Tensor) -> str | None:
    """Why numba cannot run ``op`` on ``x`` (``None`` when it can)."""
    if x.device.type != "cpu":
        return f"numba kernels run on the CPU only (got a tensor on {x.device})"
    if x.dtype not in (*_DTYPES, torch.float16, torch.bfloat16):
        return f"numba kernels take floating-point inputs (got {x.dtype})"
    if x.numel() == 0:
        return "the input is empty"
    if op in _CAST_OPS:
        return transformer.supports_cast(x)
    return None


def prefers(op: str, x: Tensor) -> bool:
    """The numba part of the auto rule: float32/float64, ≥ MIN_NUMEL elements, streamable layout."""
    if x.dtype not in _DTYPES or x.numel() < MIN_NUMEL:
        return False
    if op in _CHANNEL_OPS:
        return x.is_contiguous() or is_channels_last(x)
    return x.is_contiguous()


def warm_up(dtypes: Sequence[torch.dtype] = _DTYPES) -> None:
    """Compile (first time) or load from the disk cache every kernel, for each dtype."""
    for dt in dtypes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 4, 4, 4, generator=g, dtype=dt)
        r = torch.randn(4, 4, 4, 4, generator=g, dtype=dt)
        w = torch.ones(4, dtype=dt, requires_grad=True)
        xs = [x.requires_grad_(), x.detach().contiguous(memory_format=torch.channels_last)]
        for xi in xs:
            xi = xi.detach().requires_grad_()
            outs = [
                layer_norm.layer_norm(xi, (4,), w, w, 1e-5),
                layer_norm.rms_norm(xi, (4,), w, 1e-5),
                *residual.add_layer_norm(xi, r, (4,), w, w, 1e-5),
                *residual.add_rms_norm(xi, r, (4,), w, 1e-5),
                batch_norm.batch_norm_train(xi, w, w, 1e-5, 1)[0],
                batch_norm.batch_norm_train(xi, w, w, 1e-5, 3)[0],
                batch_norm.batch_norm_eval(xi, w.detach(), w.detach(), w, w, 1e-5, 1),
                group_norm.group_norm(xi, 2, w, w, 1e-5),
            ]
            torch.autograd.backward([o.sum() for o in outs])


BACKEND = Backend(
    name="numba",
    priority=20,
    description="fused parallel Numba CPU kernels (float32/float64; low precision via float32)",
    ops={
        "batch_norm_train": _upcast(batch_norm.batch_norm_train),
        "batch_norm_eval": _upcast(batch_norm.batch_norm_eval),
        "layer_norm": _upcast(layer_norm.layer_norm),
        "rms_norm": _upcast(layer_norm.rms_norm),
        "group_norm": _upcast(group_norm.group_norm),
        "instance_norm": _upcast(group_norm.instance_norm),
        "add_layer_norm": _upcast(residual.add_layer_norm),
        "add_rms_norm": _upcast(residual.add_rms_norm),
        "rms_norm_cast": transformer.rms_norm_cast,
        "dyt": _upcast(transformer.dyt),
        "modulate": _upcast(transformer.modulate),
    },
    supports=supports,
    prefers=prefers,
    extra={"out": OUT_OPS, "min_numel": MIN_NUMEL},
)
register(BACKEND)
