"""The import graph of wisp's four packages: no circle, and arrows only one way.

The graph is built from the source with :mod:`ast`, never by importing
anything, over ``protocol/``, ``server/``, ``engine/`` and ``bench/``.

What counts as an import (an edge ``a -> b``):

* every ``import x`` and ``from x import y`` anywhere in a module: at module
  level, inside functions and methods, and inside ``if TYPE_CHECKING:``
  blocks.  A deferred import inside a function still couples the two modules
  (each needs the other to work, and a refactor of one breaks the other), so
  a circle closed by a function-level import is a circle;
* relative imports are resolved against the importing module's package;
* ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of
  ours, otherwise to ``pkg`` (its ``__init__``).

What does not: the implicit import of a parent package's ``__init__`` when a
submodule is imported (Python runs it, but it is the package's container, not
a dependency the importer chose; counting it would make every package
``__init__`` that re-exports a submodule look like a circle).

Rules checked:

1. no cycle among our modules (the offending cycle is printed);
2. ``engine`` imports neither ``server`` nor ``bench``;
3. ``protocol`` imports none of ``server``, ``engine``, ``bench``;
4. nothing in ``server``, ``engine`` or ``protocol`` imports ``bench``
   (the load generator lives in the product; bench scripts may import it);
5. ``protocol`` never imports asyncio, torch, websockets, diffusers or uvloop.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "server", "engine", "bench")
PROTOCOL_FORBIDDEN = {"asyncio", "torch", "websockets", "diffusers", "uvloop"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Every module name ``module`` imports (ours resolved to a module of ours), with its line."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                out.append((candidate if candidate in known else base, node.lineno))
    return out


def _ours(name: str, known: set[str]) -> str | None:
    """The module of ours that ``name`` refers to (longest known prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(edges between our modules, every imported top-level name) → {importer: {target: line}}."""
    sources = _sources()
    known = set(sources)
    internal: dict[str, dict[str, int]] = {m: {} for m in sources}
    toplevel: dict[str, dict[str, int]] = {m: {} for m in sources}
    for module, path in sources.items():
        for name, line in _imports(module, path, known):
            toplevel[module].setdefault(name.split(".")[0], line)
            target = _ours(name, known)
            if target is not None and target != module:
                internal[module].setdefault(target, line)
    return internal, toplevel


def _cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """(one shortest cycle, every member) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        start = min(component)
        # Breadth-first from start back to start inside the component: the shortest circle.
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for child in sorted(graph[node]):
                    if child not in component:
                        continue
                    if child == start:
                        found = node
                        break
                    if child not in previous:
                        previous[child] = node
                        nxt.append(child)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        node = found
        while node is not None and node != start:
            path.append(node)
            node = previous[node]
        cycle = [start] + list(reversed(path[1:])) + [start]
        cycles.append((cycle, sorted(component)))
    return cycles


def _describe(found: tuple[list[str], list[str]], graph: dict[str, dict[str, int]]) -> str:
    cycle, members = found
    hops = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(hops + [f"(all {len(members)} modules in this circle: {', '.join(members)})"])


def test_the_graph_sees_every_package():
    internal, _ = _graph()
    for package in PACKAGES:
        assert package in internal
    # Sanity: function-level and relative imports are seen.
    assert "protocol.errors" in internal["protocol"]


def test_no_import_cycle():
    internal, _ = _graph()
    cycles = _cycles(internal)
    described = "\n  ".join(_describe(c, internal) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s):\n  {described}"


def _arrows(internal, source: str, targets: set[str]) -> list[str]:
    bad = []
    for module, imported in internal.items():
        if module.split(".")[0] != source:
            continue
        for target, line in imported.items():
            if target.split(".")[0] in targets:
                bad.append(f"{module} (line {line}) -> {target}")
    return sorted(bad)


def test_engine_imports_neither_server_nor_bench():
    internal, _ = _graph()
    assert _arrows(internal, "engine", {"server", "bench"}) == []


def test_protocol_imports_none_of_ours():
    internal, _ = _graph()
    assert _arrows(internal, "protocol", {"server", "engine", "bench"}) == []


def test_nothing_in_the_product_imports_bench():
    internal, _ = _graph()
    bad = []
    for source in ("server", "engine", "protocol"):
        bad += _arrows(internal, source, {"bench"})
    assert bad == []


def test_protocol_imports_no_io_or_torch():
    _, toplevel = _graph()
    bad = sorted(
        f"{module} (line {line}) imports {name}"
        for module, names in toplevel.items()
        if module.split(".")[0] == "protocol"
        for name, line in names.items()
        if name in PROTOCOL_FORBIDDEN
    )
    assert bad == []
