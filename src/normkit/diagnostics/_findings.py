"""The findings every diagnostic returns, their severities and the rich table that shows them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["SEVERITIES", "Finding", "Severity", "render_findings", "sort_findings"]

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what is wrong, how bad, where, and how to fix it.

    ``code`` is a stable machine-readable id (``"vanishing-gradients"``, ``"bias-before-norm"``,
    ...), ``severity`` one of ``"info" < "warning" < "error"``, ``layer`` the qualified module
    name it concerns (``None`` for whole-model findings), ``step`` the first training step it
    was seen at (``None`` for static checks), ``value`` the number that triggered it (a ratio,
    a fraction ...), ``message`` what was measured and ``fix`` what to do about it.

    >>> f = Finding("dead-relu", "warning", "62% of the units never fire", "lower the lr", layer="act1")
    """

    code: str
    severity: Severity
    message: str
    fix: str
    layer: str | None = None
    step: int | None = None
    value: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding severity must be one of {SEVERITIES} (got {self.severity!r})"
            )

    def as_dict(self) -> dict[str, Any]:
        """The finding as a plain dict (for JSON/CSV)."""
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; stable within a severity (keeps the order they were found in)."""
    return sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))


_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def render_findings(
    findings: Sequence[Finding],
    *,
    title: str = "normkit doctor: findings",
    console: Console | None = None,
) -> None:
    """Print ``findings`` as a rich table (or a green "no findings" line when there are none).

    >>> render_findings([])
    normkit doctor: findings: no findings
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not findings:
        console.print(f"[green]{title}: no findings[/]")
        return
    table = Table(title=title, show_lines=True)
    width = max(len(f.code) for f in findings)
    table.add_column("severity", no_wrap=True, min_width=8)
    table.add_column("finding", no_wrap=True, min_width=width)
    table.add_column("layer", overflow="fold")
    table.add_column("step", justify="right")
    table.add_column("what was measured", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=2)
    for f in sort_findings(findings):
        table.add_row(
            f"[{_STYLE[f.severity]}]{f.severity}[/]",
            f.code,
            f.layer or "-",
            "-" if f.step is None else str(f.step),
            f.message,
            f.fix,
        )
    console.print(table)
