"""The package's import structure: listing/readers split, no cycles, no private cross-imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "data_pipeline"
MAX_LINES = 400


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `data_pipeline` import in a file, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("data_pipeline"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("data_pipeline.")]
    return found


def _graph() -> dict[str, set[str]]:
    """data_pipeline module -> the data_pipeline modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        deps = set()
        for module, names in _imports(path):
            if module == "data_pipeline":  # `from data_pipeline import tokenizer as tk`
                deps |= {f"data_pipeline.{n}" for n in names}
            else:
                deps.add(module)
        graph[f"data_pipeline.{path.stem}"] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path, or None (depth-first search)."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path, node, dep]
            if dep not in state and (found := visit(dep, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_graph()) is None


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_private_names_imported_across_modules():
    bad = [
        f"{path.name}: {module}.{name}"
        for path in sorted(PACKAGE.glob("*.py"))
        for module, names in _imports(path)
        for name in names
        if name.startswith("_") and name != "__future__"
    ]
    assert bad == []


def test_listing_and_readers_replace_sources():
    graph = _graph()
    assert "data_pipeline.sources" not in graph
    assert not any("data_pipeline.sources" in deps for deps in graph.values())
    assert "data_pipeline.readers" not in graph["data_pipeline.listing"]
    assert "data_pipeline.listing" in graph["data_pipeline.readers"]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_file_size_budget(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
