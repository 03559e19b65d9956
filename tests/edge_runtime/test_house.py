"""The runtime's inner house (issue 14, README "The packages"): sizes, one-way imports, no cycles.

Rooms, arrows one way: the CLI -> the loop (commands, pipeline) -> tasks, sources and sinks; tasks -> the session
(bundle + onnxruntime) -> leaves (errors, io, stats, contract). A task never imports a source, a sink or the CLI;
a sink or the session never knows a task.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "edge_runtime"
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 80

TASKS = {"denoise", "anomaly", "codec", "embed", "calibration", "registration"}
SOURCES = {"sources", "streamsource"}
SINKS = {"outputs", "serve"}
LOOP = {"pipeline", "commands", "cli"}
SESSION = {"session", "model", "autodevice"}


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(RUNTIME.glob("*.py"))}


def runtime_imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    """edge_runtime modules imported by ``tree`` (module level only, or also inside functions)."""
    found = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and mod:
                found.add(mod.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif mod.startswith("edge_runtime."):
                found.add(mod.split(".")[1])
            elif mod == "edge_runtime":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("edge_runtime."):
                    found.add(a.name.split(".")[1])
    return found


def test_no_runtime_file_over_800_lines():
    long = {p.name: n for p in RUNTIME.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_runtime_function_over_80_lines():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n}")
    assert long == []


def test_no_import_cycle_between_runtime_modules():
    graph = {name: runtime_imports(tree, top_level_only=True) for name, tree in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep in graph and state.get(dep) is None:
                visit(dep, [*stack, node])
        state[node] = 2

    for name in graph:
        if state.get(name) is None:
            visit(name, [])


@pytest.mark.parametrize(
    "rooms, forbidden",
    [(TASKS, SOURCES | SINKS | LOOP), (SINKS, TASKS | LOOP), (SESSION, TASKS | SOURCES | SINKS | LOOP)],
)
def test_imports_flow_one_way(rooms, forbidden):
    """Anywhere in the module, lazily imported or not."""
    wrong = {}
    for name, tree in modules().items():
        if name in rooms:
            bad = runtime_imports(tree, top_level_only=False) & forbidden
            if bad:
                wrong[name] = sorted(bad)
    assert wrong == {}
