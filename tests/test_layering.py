"""Layering: the package's module-level imports form no circle, and only the CLI imports the CLI.

Imports inside functions (deferred on purpose, to keep start-up fast) and under ``TYPE_CHECKING``
are not edges: Python never runs them at import time.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import poisonlab

ROOT = Path(poisonlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The poisonlab modules ``path`` imports when it is imported (each ``from a import b`` as a.b if a module)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("poisonlab"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                if base.startswith("poisonlab"):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(ast.parse(path.read_text()).body)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the poisonlab modules it imports at import time."""
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): top_level_imports(f, modules) - {module_name(f)} for f in files}


def first_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (empty when there is none)."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return []


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert first_circle(graph) == []


def test_only_the_cli_imports_the_cli() -> None:
    graph = import_graph()
    entry_point = "poisonlab.__main__"  # `python -m poisonlab` is the command line itself
    outside = [(a, b) for a, deps in graph.items() for b in deps
               if b.startswith("poisonlab.cli") and not a.startswith("poisonlab.cli") and a != entry_point]
    assert not outside


def test_the_checker_sees_a_planted_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "poisonlab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from poisonlab.b import f\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import poisonlab.c\n"
                              "from . import a\n")
    (pkg / "c.py").write_text("def g():\n    import poisonlab.a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", pkg)
    graph = import_graph()
    assert graph["poisonlab.b"] == {"poisonlab", "poisonlab.a"} and graph["poisonlab.c"] == set()
    assert sorted(set(first_circle(graph))) == ["poisonlab.a", "poisonlab.b"]
