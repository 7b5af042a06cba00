"""normkit — the normalization toolkit for PyTorch.

Layers in :mod:`normkit.nn`, functions in :mod:`normkit.functional`, backends in
:mod:`normkit.backends`; the pure math lives in :mod:`normkit._reference` and
:mod:`normkit._stats`.
"""

from normkit import backends, diagnostics, functional, inference, nn

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "diagnostics", "functional", "inference", "nn"]
