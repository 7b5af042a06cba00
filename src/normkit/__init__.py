"""normkit — the normalization toolkit for PyTorch.

Layers in :mod:`normkit.nn`, functions in :mod:`normkit.functional`, backends in
:mod:`normkit.backends`; the pure math lives in :mod:`normkit._reference` and
:mod:`normkit._stats`.
"""

from importlib.metadata import PackageNotFoundError, version

from normkit import backends, diagnostics, functional, inference, nn

try:
    __version__ = version("normkit")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "backends", "diagnostics", "functional", "inference", "nn"]
