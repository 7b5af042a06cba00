"""Every lab experiment; importing this package registers them, in report order."""

import importlib

MODULES: tuple[str, ...] = (
    "training",
    "small_batch",
    "smoothness",
    "gradient_flow",
    "depth",
    "rnn",
    "comparison",
    "inference",
    "recalibration",
    "weight_norm",
    "transformers",
    "data_scaling",
)

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
