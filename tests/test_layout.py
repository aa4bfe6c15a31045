"""The package's layout: no import cycle, no module too long to read.

Every ``import`` and ``from ... import`` between the package's modules is an
edge, those under ``if TYPE_CHECKING:`` and inside functions included: a
cycle of type-only imports is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trio_tinkex_recovery"
NAME = PACKAGE.name
#: The most lines a module of the package may have.
MAX_LINES = 700
#: Modules still over `MAX_LINES` while the rest of the restructuring lands.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from . import _x`` imports the module ``_x``; ``from .x import
            # y`` the module ``x`` (or ``x.y`` when that is a module).
            targets = [
                f"{module}.{alias.name}"
                if f"{module}.{alias.name}" in known
                else module
                for alias in node.names
            ]
        for target in targets:
            # The longest known module the target names (a name in a module
            # counts as the module).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_of_every_kind():
    graph = _graph()
    # A plain relative import, a type-only one and one of a sibling module.
    assert f"{NAME}._wire._http" in graph[f"{NAME}._wire._service"]
    assert f"{NAME}._store" in graph[f"{NAME}._wire._restore"]
    assert f"{NAME}.cli._view" in graph[f"{NAME}.cli._board"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_too_long(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_the_engine_imports_protocols_not_implementations():
    """The engine reaches the native client and the stores only through seams."""
    seams = {f"{NAME}._store._base", f"{NAME}._store._ledger"}
    below = (f"{NAME}._wire", f"{NAME}._store", f"{NAME}.cli", f"{NAME}.testing")
    wrong = {
        (name, target)
        for name, targets in _graph().items()
        if name.startswith(f"{NAME}._engine")
        for target in targets
        if target.startswith(below) and target not in seams
    }
    assert wrong == set()


def test_no_module_reads_another_modules_private_names():
    """``from .x import _y`` across modules is a private name read from outside."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                found += [
                    f"{name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and f"{node.module}.{alias.name}".lstrip(".").split(".")[-1]
                    not in {m.rpartition(".")[2] for m in _modules()}
                ]
    assert found == []
