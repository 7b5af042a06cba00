"""The documentation's promises that a build alone does not check: every public class and function
of the API packages has an example in its docstring (run by ``--doctest-modules``) and a page of
the API reference, and the README stays short. The examples themselves run as doctests and as
the pages' tests (conftest.py); ``mkdocs build --strict`` checks links and references."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ("nn", "functional", "data", "inference", "diagnostics", "backends")


def _public(package: str) -> list[tuple[str, object]]:
    if package == "data":
        pytest.importorskip("sklearn")
    module = importlib.import_module(f"normkit.{package}")
    return [(name, getattr(module, name)) for name in module.__all__]


@pytest.mark.parametrize("package", API)
def test_every_public_class_and_function_has_an_example(package):
    missing = []
    for name, obj in _public(package):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants, type aliases, submodules
        if inspect.isclass(obj) and (
            dataclasses.is_dataclass(obj) or issubclass(obj, BaseException)
        ):
            continue  # results and errors: their producers' examples show them
        if ">>>" not in (inspect.getdoc(obj) or ""):
            missing.append(name)
    assert not missing, (
        f"normkit.{package}: {missing} have no example; add a 2-3 line '>>>' example to the "
        "docstring (it runs under --doctest-modules)"
    )


@pytest.mark.parametrize("package", API)
def test_every_api_package_has_a_reference_page(package):
    page = ROOT / "docs" / "api" / f"{package}.md"
    assert page.is_file(), f"add docs/api/{package}.md with '::: normkit.{package}'"
    assert f"::: normkit.{package}" in page.read_text()


def test_readme_reads_in_two_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, (
        f"README.md has {len(lines)} lines (at most 150): move details to a docs/ page and link it"
    )
