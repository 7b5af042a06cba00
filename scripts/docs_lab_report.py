"""Write the docs' example lab report (docs/lab/report.md and its plots) from a lab run.

    normkit lab --quick --out lab-report
    python scripts/docs_lab_report.py lab-report

Reads ``results.json`` and the PNGs that ``normkit lab`` wrote into that folder; the page shows
the verdict table, then per experiment the claim, the setup, every check, the table and the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

DOCS_LAB = Path(__file__).resolve().parent.parent / "docs" / "lab"


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) < 1e6):
        return str(int(x))
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table, ``metric ± metric_std`` in one cell where both are present."""
    if not rows:
        return []
    keys = [k for k in rows[0] if not (k.endswith("_std") and k[:-4] in rows[0]) and k != "n"]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            cell = _num(r.get(k, ""))
            if f"{k}_std" in r:
                cell += f" ± {_num(r[f'{k}_std'])}"
            cells.append(cell)
        out.append("| " + " | ".join(cells) + " |")
    return out


def _checks(checks: list[dict[str, Any]]) -> list[str]:
    out = [
        "| check | kind | claimed (mean ± std) | baseline (mean ± std) | d | 2·se | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        kind = ("primary " if c["primary"] else "secondary ") + (
            "better" if c["kind"] == "better" else "not worse"
        )
        out.append(
            f"| {c['name']} | {kind} | {c['claimed_label']}: {_num(c['mean_claimed'])} ± "
            f"{_num(c['std_claimed'])} | {c['baseline_label']}: {_num(c['mean_baseline'])} ± "
            f"{_num(c['std_baseline'])} | {_num(c['diff'])} | {_num(2 * c['se'])} | "
            f"{c['outcome']} |"
        )
    return out


def render(results: dict[str, Any]) -> str:
    meta, exps = results["meta"], results["experiments"]
    lines = [
        "# Example lab report",
        "",
        f"The output of `{meta['command']}` ({len(meta['seeds'])} seeds, torch {meta['torch']}, "
        "on a 2-core CPU), rendered by `scripts/docs_lab_report.py`. `make demo` writes the same "
        "report as one HTML page on your machine. How the lab works, the verdict rule and how to "
        "add an experiment: [the lab guide](../guide/lab.md).",
        "",
        "Numbers are means ± standard deviations over seeds. *Not supported* and *mixed* are "
        "results at this scale, not failures: every experiment is a scaled-down version of the "
        "paper's protocol, and the setup paragraph says how.",
        "",
        "| experiment | claim | verdict | primary checks supported |",
        "|---|---|---|---|",
    ]
    for e in exps:
        prim = [c for c in e["checks"] if c["primary"]]
        ok = sum(c["outcome"] == "supported" for c in prim)
        lines.append(
            f"| [`{e['id']}`](#{e['id']}) | {e['claim']} | **{e['verdict']}** | {ok}/{len(prim)} |"
        )
    lines += ["", "**The verdict rule.** " + results["rule"], ""]
    for e in exps:
        lines += [
            f"## {e['title']} {{#{e['id']}}}",
            "",
            f"**Claim**: {e['claim']} ({e['source']})  ",
            f"**Verdict**: **{e['verdict']}**  ",
            f"**Reproduce**: `{e['command']}`",
            "",
            e["setup"],
            "",
            f"![{e['id']}]({e['id']}.png)",
            "",
            *_checks(e["checks"]),
            "",
            *_table(e["table"]),
            "",
        ]
        lines += [f"- {n}" for n in e.get("notes", [])]
        if e.get("notes"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the --out folder of a `normkit lab` run")
    parser.add_argument("--to", type=Path, default=DOCS_LAB, help="where to write (docs/lab)")
    args = parser.parse_args()
    results = json.loads((args.report / "results.json").read_text())
    args.to.mkdir(parents=True, exist_ok=True)
    for e in results["experiments"]:
        shutil.copyfile(args.report / f"{e['id']}.png", args.to / f"{e['id']}.png")
    (args.to / "report.md").write_text(render(results))
    print(f"wrote {args.to / 'report.md'} and {len(results['experiments'])} plots")


if __name__ == "__main__":
    main()
