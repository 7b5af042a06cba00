"""Report writers: a rich table on the terminal and a CSV file, from a list of row dicts."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["columns", "print_table", "write_csv"]


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """All keys of ``rows`` in first-seen order."""
    cols: dict[str, None] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, None)
    return list(cols)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def print_table(rows: Sequence[dict[str, Any]], title: str = "normkit bench") -> None:
    """Print ``rows`` as a rich table (numbers right-aligned, 2–3 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in columns(rows) if c != "suite"]
    table = Table(title=title)
    for c in cols:
        numeric = all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    console.print(table)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` as CSV (union of keys as header); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path
