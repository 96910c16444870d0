"""The package's shape: no import cycle (type-only imports count), dependencies one way, and no
module too long to read (docs/architecture.md, section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chatserver", "compliance")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or the package holding a name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Every project module ``module`` imports, anywhere in it (functions and TYPE_CHECKING
    blocks included)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _project(name)
            if target is not None and target != module:
                found.add(target)
    # A package's __init__ importing nothing is not a dependency of its modules.
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle among the project's modules, or None (Tarjan would list all; one is
    enough to fail)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(GRAPH, WHITE)
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        colour[module] = GREY
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if target not in GRAPH:
                continue
            if colour[target] == GREY:
                return [*stack[stack.index(target) :], target]
            if colour[target] == WHITE:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        colour[module] = BLACK
        return None

    for module in sorted(GRAPH):
        if colour[module] == WHITE:
            found = visit(module)
            if found:
                return found
    return None


def test_the_checker_sees_imports() -> None:
    """The graph is not empty by mistake: known edges are found, type-only ones included."""
    assert "chatserver.rooms.governance" in GRAPH["chatserver.server"]
    assert "chatserver.sessions" in GRAPH["chatserver.transport.connection"]


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# What each layer may not import (docs/architecture.md, section 1).
FORBIDDEN = {
    "chatserver.protocol": ("chatserver.",),  # pure: imports nothing of the project but itself
    "chatserver.store": (
        "chatserver.rooms",
        "chatserver.sessions",
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
    ),
    "chatserver.rooms": (
        "chatserver.sessions",
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
        "chatserver.accounts",
    ),
    "chatserver.accounts": (
        "chatserver.sessions",
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
    ),
    "chatserver.sessions": (
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
    ),
    "chatserver.governance_ops": (
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
        "chatserver.sessions",
    ),
    "chatserver.services": (
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
        "chatserver.sessions",
    ),
    "chatserver.transport": ("chatserver.pool", "chatserver.admin", "chatserver.server"),
    "chatserver.pool": ("chatserver.admin", "chatserver.server", "chatserver.sessions"),
    "chatserver.admin": ("chatserver.server", "chatserver.sessions"),
    "chatserver.metrics": ("chatserver.server", "chatserver.sessions"),
    "compliance": ("chatserver.rooms", "chatserver.sessions", "chatserver.server"),
    # Export and import work on the store alone (the management API calls into them).
    "chatserver.transfer": (
        "chatserver.rooms",
        "chatserver.sessions",
        "chatserver.transport",
        "chatserver.pool",
        "chatserver.admin",
        "chatserver.server",
    ),
}


def _allowed_within(layer: str, target: str) -> bool:
    return target == layer or target.startswith(layer + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_dependencies_point_one_way(layer: str) -> None:
    wrong = []
    for module, targets in GRAPH.items():
        if not _allowed_within(layer, module):
            continue
        for target in targets:
            if _allowed_within(layer, target):
                continue
            if layer == "chatserver.protocol" and target == "chatserver":
                continue  # the package's version constants
            if any(target == f.rstrip(".") or target.startswith(f) for f in FORBIDDEN[layer]):
                if layer == "chatserver.protocol" or not target.startswith(layer):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_is_too_long() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_sessions_reach_the_store_only_through_rooms() -> None:
    """Sessions use the store's value types (a user, a stored post) but no store function."""
    for module in ("chatserver.sessions", "chatserver.governance_ops", "chatserver.services"):
        store = {t for t in GRAPH[module] if t.startswith("chatserver.store")}
        assert store <= {"chatserver.store", "chatserver.store.users", "chatserver.store.messages"}
        source = MODULES[module].read_text()
        assert "from .store import" not in source, f"{module} imports a store module's functions"
