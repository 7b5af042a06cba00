"""MkDocs hook: render benchmark tables from the CSVs that ``normkit bench`` writes.

A page holds a fenced block in the language ``csv-table``, one ``key: value`` per line::

    ```csv-table
    file: numba_bench_cpu.csv          # relative to the page
    where: dir=fwd+bwd; impl=torch eager|normkit numba
    rows: op, shape, layout, dir       # a pivot: one row per distinct (op, shape, layout, dir)
    columns: impl                      #   one column per distinct impl
    value: ms                          #   the cell
    format: .3g
    plot: kernels.png                  # the figure scripts/docs_benchmarks.py draws from it
    log: yes                           # its value axis is logarithmic
    ```

Without ``columns``/``value`` the listed ``rows`` columns are shown as they are; the figure of
such a table has a bar per ``bars`` column for each row, labelled by the ``label`` columns (a
pivot's figure: a bar per column, labelled by its ``rows``). The block becomes
a Markdown table (and the figure, when ``plot`` names one), so the numbers on the page are the
CSV's. ``scripts/docs_benchmarks.py`` reads the same blocks to draw the figures.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"^```csv-table\n(.*?)^```\n", re.M | re.S)


@dataclass
class Spec:
    file: str
    rows: list[str]
    columns: str = ""
    value: str = ""
    where: dict[str, set[str]] = field(default_factory=dict)
    format: str = ".3g"
    plot: str = ""
    title: str = ""
    label: list[str] = field(default_factory=list)
    bars: list[str] = field(default_factory=list)
    log: bool = False


def parse(block: str) -> Spec:
    """The ``key: value`` lines of a ``csv-table`` block."""
    kv: dict[str, str] = {}
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line:
            key, _, val = line.partition(":")
            kv[key.strip()] = val.strip()
    where: dict[str, set[str]] = {}
    for cond in filter(None, (c.strip() for c in kv.get("where", "").split(";"))):
        col, _, vals = cond.partition("=")
        where[col.strip()] = {v.strip() for v in vals.split("|")}
    return Spec(
        file=kv["file"],
        rows=_names(kv["rows"]),
        columns=kv.get("columns", ""),
        value=kv.get("value", ""),
        where=where,
        format=kv.get("format", ".3g"),
        plot=kv.get("plot", ""),
        title=kv.get("title", ""),
        label=_names(kv.get("label", "")),
        bars=_names(kv.get("bars", "")),
        log=kv.get("log", "no") == "yes",
    )


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def load(spec: Spec, folder: Path) -> list[dict[str, str]]:
    """The CSV's rows that pass ``where``."""
    with open(folder / spec.file, newline="") as f:
        rows = list(csv.DictReader(f))
    for col in [*spec.where, *spec.rows, spec.columns, spec.value]:
        if col and rows and col not in rows[0]:
            raise ValueError(f"{spec.file} has no column {col!r} (columns: {list(rows[0])})")
    return [r for r in rows if all(r[c] in vals for c, vals in spec.where.items())]


def _cell(text: str, fmt: str) -> str:
    try:
        return format(float(text), fmt)
    except ValueError:
        return text.replace("|", "\\|")


def pivot(spec: Spec, rows: list[dict[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the table ``spec`` describes (cells still unformatted)."""
    if not spec.columns:
        return spec.rows, [[r[c] for c in spec.rows] for r in rows]
    keys: dict[tuple[str, ...], dict[str, str]] = {}
    cols: list[str] = []
    for r in rows:
        col = r[spec.columns]
        if col not in cols:
            cols.append(col)
        keys.setdefault(tuple(r[c] for c in spec.rows), {})[col] = r[spec.value]
    body = [[*key, *(vals.get(c, "") for c in cols)] for key, vals in keys.items()]
    return [*spec.rows, *cols], body


def markdown(spec: Spec, folder: Path) -> str:
    header, body = pivot(spec, load(spec, folder))
    head = [h.replace("|", "\\|") for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c, spec.format) for c in row) + " |" for row in body]
    if spec.plot:
        lines += ["", f"![{spec.title or spec.file}]({spec.plot})"]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown_text: str, page: Any, config: Any, files: Any) -> str:
    folder = Path(page.file.abs_src_path).parent
    return BLOCK.sub(lambda m: markdown(parse(m.group(1)), folder), markdown_text)
