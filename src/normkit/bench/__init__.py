"""The benchmark harness behind ``normkit bench``: a registry of suites, timing, reports.

A *suite* is a function ``fn(quick: bool, **options) -> list[dict]`` returning one row (a flat
dict of numbers/strings) per measurement; it may accept any of the keywords ``ops``,
``compile`` and ``reps`` (the CLI passes only those it declares). Register it with
:func:`register_suite` in a module ``normkit/bench/<name>.py`` and add that module to
:data:`normkit.bench.suites.SUITE_MODULES`; ``normkit bench --<name>`` then runs it.

Timing helpers (:func:`measure`, :func:`copy_baseline`) and the report writers
(:func:`print_table`, :func:`write_csv`) are shared so every suite reports ms, GB/s and % of an
in-process memory copy of the same bytes the same way.

>>> from normkit.bench import register_suite
>>> register_suite("demo", lambda quick: [{"op": "noop", "ms": 0.0}], "a demo suite")  # doctest: +SKIP
"""

from normkit.bench._registry import Suite, get_suite, load_suites, register_suite, suite_names
from normkit.bench.report import print_table, write_csv
from normkit.bench.timing import (
    Timing,
    copy_baseline,
    measure,
    measure_interleaved,
    row_metrics,
)

__all__ = [
    "Suite",
    "Timing",
    "copy_baseline",
    "get_suite",
    "load_suites",
    "measure",
    "measure_interleaved",
    "print_table",
    "register_suite",
    "row_metrics",
    "suite_names",
    "write_csv",
]
