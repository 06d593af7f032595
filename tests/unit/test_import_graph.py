"""The package's import graph: no cycle anywhere (module-level and function-level imports alike), the report
renders from files without importing analysis code, and arrows point down the architecture's layers."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "valuelens"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / PKG).rglob("*.py")}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Imports under `if TYPE_CHECKING:` never run: annotations only, not edges of the runtime graph.
        typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and "TYPE_CHECKING" in ast.unparse(b.test)
                       for stmt in b.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t.split(".")[0] != PKG:
                    continue
                while t not in mods and "." in t:  # `import valuelens.x.attr` style
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None
    for n in sorted(graph):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 30 and graph["valuelens.analysis.questionnaire"]  # the graph was really built
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_detection_sees_a_planted_cycle() -> None:
    graph = import_graph()
    graph["valuelens.values"].add("valuelens.report")  # values -> report -> runio ... plant one arrow upward
    graph["valuelens.runio"].add("valuelens.values")
    assert _cycle(graph) is not None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        for m in graph[n]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_report_imports_no_analysis_code() -> None:
    reach = _reachable(import_graph(), "valuelens.report")
    assert not {m for m in reach if m.startswith(("valuelens.analysis", "valuelens.analyze", "valuelens.extract",
                                                    "valuelens.pipeline", "valuelens.evals", "torch"))}


def test_arrows_point_down() -> None:
    graph = import_graph()
    low = ("valuelens.values", "valuelens.runio", "valuelens.stats", "valuelens.errors", "valuelens.models",
           "valuelens.hooks", "valuelens.generate", "valuelens.backends")
    high = ("valuelens.cli", "valuelens.analysis", "valuelens.pipeline", "valuelens.extract", "valuelens.report")
    for m in low:
        bad = {t for t in _reachable(graph, m) if t.startswith(high)}
        assert not bad, f"{m} (a lower layer) imports {sorted(bad)}"
    for m in graph:  # nothing below the command line imports it
        if not m.startswith("valuelens.cli"):
            assert not {t for t in graph[m] if t.startswith("valuelens.cli")}, m
