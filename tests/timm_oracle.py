"""timm's layers as test oracles, loaded without timm's package ``__init__`` (which imports
timm.models → timm.data → torchvision; timm is installed without torchvision here).

``layer("evo_norm")`` returns ``timm.layers.evo_norm``; skips the test when timm is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

import pytest


def layer(module: str) -> ModuleType:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (test oracle; pip install timm --no-deps)")
    root = spec.submodule_search_locations[0]
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.layers")}
    real = saved["timm"] is not None and getattr(saved["timm"], "__spec__", None) is not None
    try:
        if not real:
            for name, path in (("timm", root), ("timm.layers", root + "/layers")):
                stub = types.ModuleType(name)
                stub.__path__ = [path]
                sys.modules[name] = stub
        return importlib.import_module(f"timm.layers.{module}")
    finally:
        if not real:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
