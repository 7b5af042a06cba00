"""``normkit bench``: run the registered benchmark suites, print a table, write a CSV.

``normkit bench`` runs the default suite (the norm kernels); ``--<suite>`` flags pick others,
``--all`` runs every suite. See :mod:`normkit.bench` for how to add a suite.
"""

from __future__ import annotations

import argparse

from normkit.bench._registry import get_suite, load_suites, suite_names
from normkit.bench.report import print_table, write_csv

__all__ = ["add_parser"]


def _main(args: argparse.Namespace) -> int:
    chosen = [n for n in suite_names() if getattr(args, "suite_" + n.replace("-", "_"), False)]
    if args.all:
        chosen = suite_names()
    if not chosen:
        chosen = [n for n in suite_names() if get_suite(n).default][:1] or suite_names()[:1]
    if args.keep_freed_memory:
        from normkit.bench.alloc import keep_freed_memory

        print(f"glibc keeps freed memory (no mmap per large block): {keep_freed_memory()}")
    options = {"ops": args.ops, "compile": args.compile, "reps": args.reps}
    rows = []
    for name in chosen:
        suite_rows = get_suite(name).run(args.quick, **options)
        print_table(
            suite_rows, title=f"normkit bench --{name}" + (" (quick)" if args.quick else "")
        )
        rows.extend(suite_rows)
    if args.csv:
        path = write_csv(rows, args.csv)
        print(f"wrote {len(rows)} rows to {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    load_suites()
    p = sub.add_parser(
        "bench",
        help="benchmark normkit backends against torch (ms, GB/s, %% of a memory copy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    p.add_argument(
        "--ops", nargs="+", default=None, metavar="OP", help="only these ops (suite-specific names)"
    )
    p.add_argument("--csv", default=None, metavar="PATH", help="also write all rows to this CSV")
    p.add_argument(
        "--compile", action="store_true", help="also time torch.compile (cold compile reported)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (median)")
    p.add_argument("--all", action="store_true", help="run every registered suite")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="first set glibc's mallopt so large freed blocks are reused (no page-fault cliff)",
    )
    for name in suite_names():
        s = get_suite(name)
        p.add_argument(
            f"--{name}",
            dest="suite_" + name.replace("-", "_"),
            action="store_true",
            help=s.help + (" (default)" if s.default else ""),
        )
    p.set_defaults(func=_main)
