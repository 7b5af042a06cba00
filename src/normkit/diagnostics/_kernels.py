"""Serial Numba kernels of :func:`~normkit.diagnostics.watch` (private; imported only when
numba is installed, through :func:`normkit.diagnostics._measure.kernels`; cached on disk where
the numba backend's kernels are, :func:`normkit.backends.numba.cache_dir`). They take NumPy
views of CPU tensors (``Tensor.numpy()``: no raw addresses) and run on one thread (a second
OpenMP pool next to torch's costs more than it brings on a small machine), except
``after_step``: a large model's sums after an optimizer step, on torch's thread budget
(:func:`normkit.backends.numba._runtime.threads`: one thread below its size threshold), where
a serial pass over a ResNet's weights held a recorded step back while the step itself ran on
every thread.

An optimizer step's statistics are memory-bound: the torch ops that copy the weights, subtract
the initial ones and take three norms read and write the parameters about thirteen times over;
these kernels read them three times after torch's (multi-threaded) copy of the weights before
the step, accumulating in float64. ``after_step`` takes one parameter per call (large models);
``span_snapshot``/``span_change`` take all of them at once, before and after the step, after a
``torch.cat`` copy each (small models, where a call per parameter costs more than the extra
pass).

``channel_moments`` gives a batch norm's batch statistics to the health timeline in two reads
of its input (the torch ops take six passes: 2-4x slower on one thread, from 32×8×8×8 to
32×64×32×32). The output statistics stay torch reductions: a fused one-pass kernel over a
layer's output (sum, sum of squares, min, max, per-channel max) measured 1.3-2.5x slower than
torch's vectorized reductions from 64k values up (its min/max do not vectorize).
"""

from __future__ import annotations

from numba import prange

from normkit.backends.numba._cache import njit

# reassociation and FMA only (no nnan/ninf: a NaN must reach the sums, where it is detected)
_FLAGS = {"fastmath": {"reassoc", "contract", "nsz"}, "error_model": "numpy", "cache": True}


@njit(**_FLAGS)
def change(w, old):  # pragma: no cover - jitted
    """Σ(w − old)² of two 1-D arrays of the same length."""
    a = 0.0
    for i in range(w.shape[0]):
        d = w[i] - old[i]
        a += d * d
    return a


@njit(**_FLAGS)
def _norms(w, w0):  # pragma: no cover - jitted
    a = 0.0
    b = 0.0
    for i in range(w.shape[0]):
        v = w[i]
        d = v - w0[i]
        a += v * v
        b += d * d
    return a, b


# (the span kernels hand each span to a loop from 0 over slices: a loop over
# range(bounds[s], bounds[s + 1]) measured 4x slower, not vectorized)
@njit(**_FLAGS)
def span_snapshot(w, w0, bounds, sq):  # pragma: no cover - jitted
    """Per span ``s`` (``bounds[s]:bounds[s + 1]`` of the 1-D ``w`` and ``w0``), ``sq[s, :2] =
    (Σw², Σ(w − w₀)²)``."""
    for s in range(bounds.shape[0] - 1):
        sq[s, 0], sq[s, 1] = _norms(w[bounds[s] : bounds[s + 1]], w0[bounds[s] : bounds[s + 1]])


@njit(**_FLAGS)
def span_change(w, old, bounds, sq):  # pragma: no cover - jitted
    """Per span ``s`` of the 1-D ``w`` and ``old``, ``sq[s, 2] = Σ(w − old)²``."""
    for s in range(bounds.shape[0] - 1):
        sq[s, 2] = change(w[bounds[s] : bounds[s + 1]], old[bounds[s] : bounds[s + 1]])


@njit(**_FLAGS)
def _row_sum(r):  # pragma: no cover - jitted
    a = 0.0
    for i in range(r.shape[0]):
        a += r[i]
    return a


@njit(**_FLAGS)
def _row_dev2(r, m):  # pragma: no cover - jitted
    a = 0.0
    for i in range(r.shape[0]):
        d = r[i] - m
        a += d * d
    return a


@njit(**_FLAGS)
def channel_moments(x, out):  # pragma: no cover - jitted
    """Of ``x`` (N, C, R), per channel ``c``: ``out[0, c]`` the mean and ``out[1, c]`` Σ(x −
    mean)² over N and R, in two reads (a NaN or ±inf reaches its channel's values)."""
    n, c, r = x.shape
    out[:] = 0.0
    for i in range(n):
        for j in range(c):
            out[0, j] += _row_sum(x[i, j])
    out[0] /= max(n * r, 1)
    for i in range(n):
        for j in range(c):
            out[1, j] += _row_dev2(x[i, j], out[0, j])


@njit(parallel=True, **_FLAGS)
def after_step(w, w0, old):  # pragma: no cover - jitted
    """Of the weights ``w`` after a step, their initial values ``w0`` and their copy ``old``
    from before it (all 1-D, the same length): (Σold², Σ(old − w₀)², Σ(w − old)²). Parallel:
    call it under :func:`normkit.backends.numba._runtime.threads`, which runs small
    parameters on one thread."""
    a = 0.0
    b = 0.0
    c = 0.0
    for i in prange(w.shape[0]):
        v = old[i]
        d = v - w0[i]
        e = w[i] - v
        a += v * v
        b += d * d
        c += e * e
    return a, b, c
