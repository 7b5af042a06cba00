"""A griffe extension that makes normkit's docstrings render as Markdown in the API reference.

The docstrings are written for ``help()`` and doctest as much as for the site, so they use a few
reStructuredText forms that Markdown does not know. This rewrites them when mkdocstrings loads the
package (the source files are not touched):

* ``:class:`x```, ``:func:`~a.b```, ... (Sphinx roles) become inline code;
* ``.. math:: expr`` (one line, or an indented block) becomes a ``$$ ... $$`` display formula;
* doctest examples (``>>>`` lines and their output) become ``pycon`` code blocks;
* simple tables (``=====  =====`` borders) become Markdown tables.

A second extension gives constructors written with :func:`normkit.nn._base.adds_options`
(``__init__(self, *args, <options>, **kwargs)``) the full signature they have at run time, which
static analysis cannot see.
"""

from __future__ import annotations

import inspect
import itertools
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const|ref|doc):`~?([^`]+)`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _table(lines: list[str]) -> list[str]:
    """A reStructuredText simple table (its lines, borders included) as a Markdown table."""
    border = lines[0]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    starts = [a for a, _ in spans] + [None]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in itertools.pairwise(starts)]

    rows: list[list[str]] = []
    for line in lines[1:]:
        if _BORDER.match(line) or not line.strip():
            continue
        row = cells(line)
        if rows and not row[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row, strict=True)]
        else:
            rows.append(row)
    pad = border[: len(border) - len(border.lstrip())]
    out = [pad + "| " + " | ".join(rows[0]) + " |", pad + "|" + "---|" * len(spans)]
    return out + [
        pad + "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]
    ]


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    if match.group(0).split("`")[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite(text: str) -> str:
    """Return ``text`` with Sphinx roles, ``.. math::`` and doctest blocks turned into Markdown.

    >>> rewrite(":class:`~torch.nn.LayerNorm` and :func:`normkit.functional.layer_norm`")
    '`LayerNorm` and `normkit.functional.layer_norm`'
    >>> print(rewrite(".. math:: y = x"))
    $$
    y = x
    $$
    >>> print(rewrite("==  ===\\na   b\\n==  ===\\n1   x\\n    y\\n==  ==="))
    | a | b |
    |---|---|
    | 1 | x y |
    """
    lines = _ROLE.sub(_role, text).splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if _BORDER.match(line):
            block = [line]
            i += 1
            borders = 1
            while i < len(lines) and borders < 3:
                block.append(lines[i])
                borders += bool(_BORDER.match(lines[i]))
                i += 1
            out += _table(block) if borders == 3 else block
            continue
        math = _MATH.match(line)
        if math:
            pad, formula = math.group(1), [math.group(2)] if math.group(2) else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
                if lines[i].strip():
                    formula.append(lines[i].strip())
                elif formula:
                    break
                i += 1
            out += [f"{pad}$$", *(pad + f for f in formula), f"{pad}$$"]
            continue
        if line.lstrip().startswith(">>>"):
            pad = line[: _indent(line)]
            block = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(pad):
                block.append(lines[i][len(pad) :])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded objects with :func:`rewrite`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)


class AddsOptionsSignatures(griffe.Extension):
    """Replace the parameters of ``@adds_options(...)`` constructors by their run-time ones."""

    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        if not any(str(d.value).startswith("adds_options") for d in func.decorators):
            return
        signature = inspect.signature(griffe.dynamic_import(func.path))
        func.parameters = griffe.Parameters(
            *(
                griffe.Parameter(
                    p.name,
                    annotation=None if p.annotation is p.empty else str(p.annotation),
                    kind=griffe.ParameterKind(p.kind.description),
                    default=None if p.default is p.empty else repr(p.default),
                )
                for p in signature.parameters.values()
            )
        )
