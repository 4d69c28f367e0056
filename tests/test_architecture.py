"""The package's shape: layers only look down, no import circles, no module long without a reason.

The layers (see the developers' ARCHITECTURE notes), lowest first::

    core, errors  <-  stores, client  <-  runtime  <-  server | adapters | mcp
                  <-  cli, testing, demo  <-  the facade (aegis/__init__.py)

A module may import its own layer or a lower one; the three integration
packages of one layer do not import each other. Imports are read from the
source (every ``import`` statement, those inside functions included), so a
lazy import cannot hide a circle or an upward step; only the blocks under
``if TYPE_CHECKING:`` are left out, as they are annotations and never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aegis"

#: the layer of each top-level part of the package
LAYERS = {
    "core": 0,
    "errors": 0,
    "_version": 0,
    "stores": 1,
    "client": 1,
    "runtime": 2,
    "server": 3,
    "adapters": 3,
    "mcp": 3,
    "cli": 4,
    "testing": 4,
    "demo": 4,
    "demo_crm": 4,
    "__main__": 5,
}
FACADE_LAYER = 6
#: the parts of one layer that must not import each other
SIBLINGS = frozenset({"server", "adapters", "mcp"})
#: a module longer than this says why at its top
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()
# Every module parsed once, at collection: CPython 3.11.7's ast.parse can fail
# with "SystemError: AST constructor recursion depth mismatch" when called from
# a test after others have run (seen once in a full run); at collection, where
# the import graph has always been built, it never has.
TEXTS = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}
TREES = {name: ast.parse(text) for name, text in TEXTS.items()}


def _imports(name: str, path: Path) -> set[str]:
    """The modules of the package that ``name`` imports when it runs."""
    tree = TREES[name]
    annotations_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            annotations_only.update(id(inner) for inner in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            module = target  # "from a.b import c": c may be a module or a name in a.b
            while module and module not in MODULES and "." in module:
                module = module.rpartition(".")[0]
            if module in MODULES and module != name:
                found.add(module)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def _layer(name: str) -> int:
    return LAYERS[_part(name)] if "." in name else FACADE_LAYER


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            part = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                part.append(other)
                if other == node:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_every_part_of_the_package_has_a_layer() -> None:
    """A new top-level module or package is given its place in LAYERS before it lands."""
    assert sorted({_part(name) for name in MODULES if "." in name} - set(LAYERS)) == []


def test_no_import_circles() -> None:
    """No two modules of aegis import each other, directly or through others, lazily or not."""
    assert _circles(GRAPH) == []


def test_the_circle_finder_finds_a_circle() -> None:
    """The check above can fail: a made-up import from risk back to policy makes a circle."""
    graph = {name: set(targets) for name, targets in GRAPH.items()}
    graph["aegis.core.risk"].add("aegis.core.policy")
    assert any({"aegis.core.policy", "aegis.core.risk"} <= set(part) for part in _circles(graph))


def test_layers_only_look_down() -> None:
    """No module imports a higher layer, nor a sibling integration package of its own layer."""
    wrong = []
    for name, targets in sorted(GRAPH.items()):
        for target in sorted(targets):
            if _layer(target) > _layer(name):
                wrong.append(f"{name} -> {target} (upward)")
            elif _part(name) in SIBLINGS and _part(target) in SIBLINGS - {_part(name)}:
                wrong.append(f"{name} -> {target} (sideways)")
    assert wrong == []


def test_errors_import_nothing_of_the_package() -> None:
    """aegis.errors is the bottom: every module may raise its errors, so it imports none."""
    assert GRAPH["aegis.errors"] == set()


def test_the_runtime_imports_no_adapter() -> None:
    """The executor interface lives in the runtime; adapters.base only re-exports it."""
    assert not any(
        target.startswith("aegis.adapters")
        for name, targets in GRAPH.items()
        if name.startswith("aegis.runtime")
        for target in targets
    )


def test_long_modules_say_why() -> None:
    """A module over MAX_LINES lines has a paragraph starting "Size:" in its docstring."""
    unexplained = []
    for name, text in sorted(TEXTS.items()):
        if text.count("\n") <= MAX_LINES:
            continue
        docstring = ast.get_docstring(TREES[name]) or ""
        if not re.search(r"^Size: \S", docstring, re.MULTILINE):
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == []
