"""Draw the figures of the benchmarks page from its CSVs.

    python scripts/docs_benchmarks.py

Reads every ``csv-table`` block of docs/benchmarks/index.md (the format is described in
docs/_hooks.py, which renders the tables when the site is built) and writes the PNG its ``plot``
key names, next to the page. Rerun it after replacing a CSV.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks" / "index.md"


def _hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def draw(hooks, spec, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    rows = hooks.load(spec, folder)
    if spec.columns:
        header, body = hooks.pivot(spec, rows)
        n = len(spec.rows)
        labels = [" ".join(r[:n]) for r in body]
        series = {col: [_float(r[n + i]) for r in body] for i, col in enumerate(header[n:])}
    else:
        labels = [" ".join(r[c] for c in spec.label) for r in rows]
        series = {col: [_float(r[col]) for r in rows] for col in spec.bars}
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.28 * len(labels) * max(1, len(series) / 2)))
    for k, (name, vals) in enumerate(series.items()):
        ys = [i + (k - (len(series) - 1) / 2) * height for i in range(len(labels))]
        ax.barh(ys, vals, height=height, label=name)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    if spec.log:
        ax.set_xscale("log")
    if not spec.columns and len(spec.bars) == 1 and "speedup" in spec.bars[0]:
        ax.axvline(1.0, color="black", linewidth=0.8)
    if spec.columns and spec.value == "speedup":
        ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(spec.title or spec.value)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = folder / spec.plot
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    hooks = _hooks()
    text = PAGE.read_text()
    for match in hooks.BLOCK.finditer(text):
        spec = hooks.parse(match.group(1))
        if spec.plot:
            print("wrote", draw(hooks, spec, PAGE.parent).relative_to(ROOT))


if __name__ == "__main__":
    main()
