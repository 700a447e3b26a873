"""The layers of sync_core, as imports: each package imports only the layers below it, and no
module imports one that imports it back (no cycle, also through ``TYPE_CHECKING`` imports).

The table is the architecture (docs/architecture.md draws it); a new arrow upward fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.harness.paths import ROOT

# What each part of sync_core may import, besides itself (bottom to top).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "logs": {"errors"},
    "registry": {"errors", "logs"},
    "config": {"registry", "errors", "logs"},
    "engine": {"config", "registry", "errors", "logs"},
    "plan": {"engine", "config", "registry", "errors", "logs"},
    "report": {"plan", "engine", "config", "registry", "errors", "logs"},
    "jobs": {"report", "plan", "engine", "config", "registry", "errors", "logs"},
    "azure": {"jobs", "report", "plan", "engine", "config", "registry", "errors", "logs"},
    "cli": {"azure", "jobs", "report", "plan", "engine", "config", "registry", "errors", "logs"},
    "__main__": {"cli"},
}
EDGE = ROOT / "function_app.py"  # the Functions edge: parses trigger input, calls the core
EDGE_ALLOWED = {"azure", "logs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The sync_core modules ``path`` imports (``from sync_core.x import y`` counts y when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sync_core"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sync_core"):
            assert node.level == 0, f"{path}: relative import (the layers are read from absolute ones)"
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in (ROOT / "sync_core").rglob("*.py")}


def part(module: str) -> str:
    """``sync_core.engine.copier`` -> ``engine``; ``sync_core.errors`` -> ``errors``."""
    return module.split(".")[1] if "." in module else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "sync_core"))
def test_each_module_imports_only_the_layers_below_it(module):
    own = part(module)
    assert own in ALLOWED, f"{module}: sync_core/{own} is not in the layer table (tests/meta/test_imports.py)"
    upward = sorted(
        m
        for m in imports(MODULES[module])
        if part(m) != own and part(m) not in ALLOWED[own] and m != "sync_core"
    )
    assert not upward, f"{module} imports {upward}: {own} may import only {sorted(ALLOWED[own])}"


def test_the_functions_edge_calls_the_azure_layer_only():
    used = {part(m) for m in imports(EDGE)}
    assert used <= EDGE_ALLOWED, f"function_app.py imports {sorted(used - EDGE_ALLOWED)}"


def test_no_module_imports_one_that_imports_it_back():
    graph = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_table_catches_an_arrow_upward(tmp_path):
    # the check itself: an engine module importing the planner is refused
    probe = tmp_path / "probe.py"
    probe.write_text("from sync_core.plan.planner import Planner\n")
    used = {part(m) for m in imports(probe)}
    assert used == {"plan"} and "plan" not in ALLOWED["engine"]


def test_every_package_says_what_it_owns_and_what_it_may_import():
    for init in sorted((ROOT / "sync_core").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc, f"{init.relative_to(ROOT)}: say what it owns and may import"
