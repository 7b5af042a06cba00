"""Plot helpers shared by the experiments (matplotlib, drawn on axes the report provides)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from normkit.lab.experiment import Record

__all__ = ["COLORS", "bars", "curves", "lines"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _groups(records: Sequence[Record], key: Callable[[Record], str]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def curves(
    ax: Any,
    records: Sequence[Record],
    *,
    x: str,
    y: str,
    label: Callable[[Record], str],
    title: str = "",
    ylabel: str = "",
    xlabel: str = "step",
    logy: bool = False,
) -> None:
    """Mean ± std (shaded) over seeds of per-record curves ``r[x]``/``r[y]`` (lists)."""
    for i, (name, rs) in enumerate(_groups(records, label).items()):
        n = min(len(r[y]) for r in rs)
        if n == 0:
            continue
        ys = np.array([r[y][:n] for r in rs], dtype=float)
        xs = np.array(rs[0][x][:n], dtype=float)
        mu, sd = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
        c = COLORS[i % len(COLORS)]
        ax.plot(xs, mu, color=c, label=name)
        ax.fill_between(xs, mu - sd, mu + sd, color=c, alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def lines(
    ax: Any,
    records: Sequence[Record],
    *,
    x: str,
    y: str,
    label: Callable[[Record], str],
    title: str = "",
    ylabel: str = "",
    xlabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> None:
    """Mean ± std over seeds of scalar ``r[y]`` against scalar ``r[x]``, one line per label."""
    for i, (name, rs) in enumerate(_groups(records, label).items()):
        by_x: dict[float, list[float]] = {}
        for r in rs:
            by_x.setdefault(float(r[x]), []).append(float(r[y]))
        xs = sorted(by_x)
        mu = np.array([np.mean(by_x[v]) for v in xs])
        sd = np.array([np.std(by_x[v]) for v in xs])
        ax.errorbar(
            xs,
            mu,
            yerr=sd,
            color=COLORS[i % len(COLORS)],
            marker="o",
            ms=3,
            capsize=2,
            label=name,
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def bars(
    ax: Any,
    records: Sequence[Record],
    *,
    y: str,
    label: Callable[[Record], str],
    title: str = "",
    ylabel: str = "",
) -> None:
    """Mean ± std over seeds of scalar ``r[y]`` per label, seeds as dots."""
    groups = _groups(records, label)
    for i, rs in enumerate(groups.values()):
        vals = np.array([float(r[y]) for r in rs])
        c = COLORS[i % len(COLORS)]
        ax.bar(i, vals.mean(), yerr=vals.std(), color=c, alpha=0.7, capsize=3)
        ax.plot(np.full(len(vals), i), vals, "k.", ms=4)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, fontsize=7, ha="right")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
