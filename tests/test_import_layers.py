"""Packages depend one way: no import circle between jaxlm's subpackages or between its files,
counting the imports written inside functions (they run later, but they are still a dependency).

Each file of a subpackage (`jaxlm/train/*.py`, ...) counts as that subpackage; each top-level
file (`jaxlm/errors.py`, the `jaxlm/__init__.py` face, ...) is its own node. `from pkg import x`
is an edge to `pkg.x` where that is a module, else to `pkg` (its `__init__.py`); the parent
packages Python runs on the way are not counted, or every file would sit in a circle with
`jaxlm/__init__.py`. Imports under `if TYPE_CHECKING:` never run and are not counted.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxlm"


def module_files() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict) -> str:
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.AST):
    """Every import statement of a module, at any depth, except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_edges(modules: dict[str, pathlib.Path]) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of the first import of it}."""
    edges: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        out = edges.setdefault(module, {})
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != "jaxlm":
                    continue
                target = _resolve(target, modules)
                if target != module:
                    out.setdefault(target, f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges


def layer_of(module: str, modules: dict[str, pathlib.Path]) -> str:
    """`jaxlm.train.loop` -> `jaxlm.train`; a top-level file or the `jaxlm` face stays itself."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def find_cycle(graph: dict[str, dict[str, str]]) -> list[tuple[str, str, str]] | None:
    """One circle as [(from, to, where)], or None. Depth-first search with colours."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                ring = path[path.index(nxt):] + [nxt]
                return [(a, b, graph[a][b]) for a, b in zip(ring, ring[1:], strict=False)]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def describe(cycle: list[tuple[str, str, str]]) -> str:
    return "import circle:\n" + "\n".join(f"  {a} -> {b}  ({where})" for a, b, where in cycle)


def test_no_import_circle_between_files():
    cycle = find_cycle(import_edges(module_files()))
    assert cycle is None, describe(cycle)


def test_no_import_circle_between_subpackages():
    modules = module_files()
    layers: dict[str, dict[str, str]] = {}
    for module, targets in import_edges(modules).items():
        here = layer_of(module, modules)
        out = layers.setdefault(here, {})
        for target, where in targets.items():
            there = layer_of(target, modules)
            if there != here:
                out.setdefault(there, f"{where} ({module} -> {target})")
    cycle = find_cycle(layers)
    assert cycle is None, describe(cycle)


def test_a_planted_circle_is_named():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3"}, "d": {"a": "d.py:4"}}
    assert describe(find_cycle(graph)) == ("import circle:\n  a -> b  (a.py:1)\n  b -> c  (b.py:2)\n"
                                           "  c -> a  (c.py:3)")
    assert find_cycle({"a": {"b": "a.py:1"}, "b": {}}) is None
