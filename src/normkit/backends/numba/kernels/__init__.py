"""Numba CPU kernels of the ``numba`` backend, one module per op family (imported with numba).

Every kernel writes into caller-provided arrays (no allocation of big outputs here), so the
caller decides between fresh outputs and reused buffers. Conventions:

* Statistics accumulate in float64 (two passes over a cache-resident slice, or Chan et al.'s
  pairwise merge of cache-sized blocks), whatever the input dtype; the per-row/per-channel
  constants are then rounded once to the input dtype (stored into a small typed array and read
  back) so the streaming loops run in the input dtype at full SIMD width.
* ``fastmath`` allows reassociation/contraction (vectorised reductions, FMAs) but not
  ``nnan``/``ninf``: NaN and Inf propagate exactly as in torch.
* ``cache=True``: a process loads compiled kernels from the disk cache instead of recompiling
  (see :mod:`normkit.backends.numba._cache`).

Layouts: rows ``(M, N)`` for layer/RMS norm over the last dim; ``(A, C, B)`` for batch norm with
the channel in the middle (contiguous NCHW: A = N, B = H·W); ``(M, C)`` rows for channels-last
batch norm; ``(N, C, S)`` and ``(N, S, C)`` for group norm contiguous and channels-last.
"""

from __future__ import annotations

#: fastmath flags of every kernel: reassociation and contraction, NaN/Inf semantics kept.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: ``njit`` options of the parallel kernels.
PARALLEL = {"parallel": True, "fastmath": FASTMATH, "cache": True, "nogil": True}
#: Rows per block in the channels-last statistics (block stays in L1 between its two passes).
ROW_BLOCK = 64
