"""Runs the examples: docstring examples (``--doctest-modules`` over ``src/normkit``) and every
Python code block of README.md and docs/**/*.md.

The blocks of a page run in order, in one namespace, as one test (``docs/guide/data.md::examples``),
in a fresh temporary folder. A block that cannot run everywhere is preceded by a comment:
``<!-- skip: REASON -->`` (never run here, e.g. it needs several processes) or
``<!-- skip-if: EXPR; REASON -->`` (``EXPR`` is evaluated in the page's namespace, e.g.
``not torch.cuda.is_available()``).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile
import textwrap
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent
SRC = ROOT / "src"

# Packages of optional extras: a module that needs one that is not installed is not collected for
# doctests (its tests skip themselves), instead of failing collection.
OPTIONAL = {"numba", "sklearn", "matplotlib", "triton", "keras", "scipy", "dask", "distributed"}


# Scripts the tests run in a subprocess (not test modules; importing one runs it).
collect_ignore = ["tests/hidden_extras.py"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix != ".py" or SRC not in collection_path.parents:
        return None
    if collection_path.name == "__main__.py":  # runs the command line when imported
        return True
    try:
        importlib.import_module(_module_name(collection_path))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in OPTIONAL:
            return True
        raise
    return None


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    """``np`` and ``torch`` are imported in every docstring example, as numpy's docs assume."""
    doctest_namespace.update(np=np, torch=torch)


PAGES = ("README.md", "docs/*.md", "docs/*/*.md")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_SKIP = re.compile(r"<!--\s*skip(?P<if>-if)?:\s*(?P<text>.*?)\s*-->\s*$", re.S)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".md" or ROOT not in file_path.parents:
        return None
    if not any(file_path.relative_to(ROOT).match(p) for p in PAGES):
        return None
    return MarkdownPage.from_parent(parent, path=file_path)


class MarkdownPage(pytest.File):
    def collect(self) -> list[pytest.Item]:
        if not any(b["lang"] == "python" for b in _FENCE.finditer(self.path.read_text("utf-8"))):
            return []
        return [MarkdownExamples.from_parent(self, name="examples")]


class MarkdownExamples(pytest.Item):
    """Every ```python block of one page, run in order in one namespace."""

    def runtest(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        namespace: dict[str, Any] = {"__name__": "__docs__"}
        cwd, tmp = os.getcwd(), tempfile.mkdtemp(prefix="normkit-docs-")
        torch.manual_seed(0)
        os.chdir(tmp)
        ran, skipped, end = 0, [], 0
        try:
            for block in _FENCE.finditer(text):
                between, end = text[end : block.start()], block.end()
                if block["lang"] != "python":
                    continue
                skip = _SKIP.search(between)
                if skip and skip["if"]:
                    expr, _, reason = skip["text"].partition(";")
                    if eval(expr, namespace):
                        skipped.append(reason.strip())
                        continue
                elif skip:
                    skipped.append(skip["text"])
                    continue
                line = text.count("\n", 0, block.start("body"))
                code = "\n" * line + textwrap.dedent(block["body"])
                exec(compile(code, str(self.path), "exec"), namespace)
                ran += 1
        finally:
            os.chdir(cwd)
            shutil.rmtree(tmp, ignore_errors=True)
        if skipped and not ran:
            pytest.skip("; ".join(skipped))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        """The traceback from the page's failing line on (not pytest's and exec's frames)."""
        frames = traceback.extract_tb(excinfo.tb)
        first = next((i for i, f in enumerate(frames) if f.filename == str(self.path)), 0)
        lines = traceback.format_list(frames[first:])
        return "".join(lines + traceback.format_exception_only(excinfo.value)).rstrip()

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: python examples"
