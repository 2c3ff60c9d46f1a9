"""The layout the design card asks for: no import cycle among the project's modules, the dependency direction
service → workers → discovery → rules, at most 8 modules directly in discovery/, no module over 500 lines and no
function over 80 lines in the dispatcher."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rules", "discovery", "workers", "service", "migrations", "experiments")
#: the layers, lowest first: a module may import its own layer and the ones below it, never one above
LAYERS = ("rules", "discovery", "workers", "service")
MAX_MODULE_LINES = 500
MAX_TOP_LEVEL_DISCOVERY_MODULES = 8
MAX_DISPATCHER_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every Python module of the project packages: dotted name → file."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions included), except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The project modules one import statement loads (``from a.b import c`` → a.b.c when that is a module)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
        return
    base = node.module or ""
    if node.level:
        anchor = here.split(".") if is_package else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in known:
            yield full
        elif base in known:
            yield base


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (explicitly; a submodule's implicit parent import is not an edge)."""
    mods = project_modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        graph[name] = {t for n in _import_nodes(tree) for t in _targets(n, name, is_pkg, known) if t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one is an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_walker_reads_function_level_and_relative_imports() -> None:
    tree = ast.parse("def f():\n    from discovery.router import discover\nfrom . import spec\n")
    known = {"discovery.router", "discovery.spec", "discovery"}
    found = {t for n in _import_nodes(tree) for t in _targets(n, "discovery.goal", False, known)}
    assert found == {"discovery.router", "discovery.spec"}


def test_no_import_cycles() -> None:
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_dependency_direction() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = [f"{m} → {t}" for m, targets in import_graph().items() for t in targets
             if m.split(".")[0] in rank and t.split(".")[0] in rank
             and rank[t.split(".")[0]] > rank[m.split(".")[0]]]
    assert not wrong, "imports against service → workers → discovery → rules: " + ", ".join(sorted(wrong))


def test_discovery_top_level_is_small() -> None:
    top = sorted(p.name for p in (ROOT / "discovery").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_DISCOVERY_MODULES, top


def test_no_module_over_500_lines() -> None:
    long = {name: n for name, path in project_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_dispatcher_function_over_80_lines() -> None:
    path = ROOT / "service" / "runs" / "dispatcher.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_DISPATCHER_FUNCTION_LINES}
    assert not long, long
