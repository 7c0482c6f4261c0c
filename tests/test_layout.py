"""The package layout holds: parts import in one direction and nothing imports in a circle.

The parts are the subpackages of ``ptdeploy`` (templates, models, serving, capacity, inference,
workspace) and the top-level modules, which are either the base every part may use (errors,
limits, state, names, progress, ...) or the client-side entry points (``targets``, which
starts the local workspace, and ``cli``). Imports inside functions count too; imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
ENTRY_POINTS = {"ptdeploy.targets", "ptdeploy.cli"}  # the client side's doors
SUBPACKAGES = ("templates", "models", "serving", "capacity", "inference", "workspace")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((LIB / "ptdeploy").rglob("*.py")):
        name = ".".join(path.relative_to(LIB).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _runtime_statements(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # annotations only
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _runtime_statements(inner)


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_statements(ast.parse(path.read_text()).body):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found.update(t for t in targets if t in MODULES and t not in (name, "ptdeploy"))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def part(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in SUBPACKAGES):
        return pieces[1]
    return module if module in ENTRY_POINTS else "base"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_parts_are_subpackages():
    top = {p.stem for p in (LIB / "ptdeploy").glob("*.py")} - {"__init__"}
    assert len(top) <= 12, f"{len(top)} modules beside the parts: {sorted(top)}"
    for sub in SUBPACKAGES:
        assert (LIB / "ptdeploy" / sub / "__init__.py").is_file()


def test_no_module_imports_in_a_circle():
    assert _cycles(GRAPH) == []


def test_the_parts_import_in_one_direction():
    parts: dict[str, set[str]] = defaultdict(set)
    for module, imported in GRAPH.items():
        parts[part(module)].update(part(i) for i in imported if part(i) != part(module))
    assert _cycles(parts) == [], dict(parts)


def test_the_base_imports_only_the_base():
    for module, imported in GRAPH.items():
        if part(module) == "base":
            assert {i for i in imported if part(i) != "base"} == set(), module


def test_the_local_workspace_imports_nothing_from_the_client_side():
    client = {"templates", "serving", "capacity", "inference", *ENTRY_POINTS}
    for module, imported in GRAPH.items():
        if part(module) == "workspace":
            assert {i for i in imported if part(i) in client} == set(), module


def test_the_client_side_reaches_the_workspace_only_through_its_doors():
    for module, imported in GRAPH.items():
        if part(module) != "workspace" and module not in ENTRY_POINTS:
            assert {i for i in imported if part(i) == "workspace"} == set(), module
