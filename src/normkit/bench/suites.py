"""The suite modules ``normkit bench`` imports; each registers its suite(s) on import.

Adding a suite is one line here (keep the list sorted after the first entry, the default suite).
"""

SUITE_MODULES: tuple[str, ...] = (
    "normkit.bench.kernels",
    "normkit.bench.data",
    "normkit.bench.inference",
    "normkit.bench.recalibrate",
    "normkit.bench.rnn",
    "normkit.diagnostics.bench",
)
