"""The ``normkit`` command. Each subcommand lives in its own module exposing
``add_parser(subparsers)``, which registers the parser and sets ``func`` (taking the parsed
namespace, returning an exit code). Adding a command is one line in ``_COMMANDS``.

A command that needs a missing optional dependency prints one line naming the
``pip install 'normkit[extra]'`` that adds it and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from normkit import __version__
from normkit._optional import MissingDependencyError

__all__ = ["main"]

_COMMANDS: tuple[str, ...] = (
    "normkit.compare",
    "normkit.bench.command",
    "normkit.bench.tune",
    "normkit.inference.cli",
    "normkit.lab.cli",
    "normkit.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normkit", description="normkit — the normalization toolkit for PyTorch"
    )
    parser.add_argument("--version", action="version", version=f"normkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``normkit`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except MissingDependencyError as err:
        print(f"normkit: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
