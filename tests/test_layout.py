"""The package's layout rules, read from the source (issue 33's "clean boundaries" and "files of
one concern"): no module over 400 lines, no import cycle (lazy imports inside functions count), no
private name imported from another package."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "attentionrnn"
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every ``attentionrnn`` import in ``path``, at any depth: ``name`` is
    what a ``from`` import takes (``None`` for ``import module``)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "attentionrnn":
                found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "attentionrnn"]
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for target, name in _imports(path):
            sub = f"{target}.{name}"
            edges.add(sub if sub in MODULES else target)  # a submodule, else the module itself
        graph[module] = {m for m in edges if m in MODULES and m != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    assert not _cycles(_graph())
    # the check sees a cycle where there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def _package(module: str) -> str:
    """The package ``module`` belongs to (a package belongs to itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_name_is_imported_from_another_package():
    """``from attentionrnn.layers import _extension`` inside ``attentionrnn.layers`` is the
    package's own business; the same import from an experiment would not be."""
    crossing = []
    for module in MODULES:
        for target, name in _imports(MODULES[module]):
            parts = [*target.split("."), name or ""]
            if not any(p.startswith("_") and not p.startswith("__") for p in parts):
                continue
            home = _package(target) if target in MODULES else target
            if not (_package(module) + ".").startswith(home + "."):
                crossing.append(f"{module}: from {target} import {name}")
    assert not crossing, crossing
