"""Package structure: no import cycle inside prune_core, no oversized module.

Both checks read the source with `ast` (nothing is imported), so they are fast and see
every import, also those inside functions.
"""

import ast
from pathlib import Path

PACKAGE = "prune_core"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 750


def _module_files() -> dict[str, Path]:
    """Module name (prune_core.x, prune_core.sub for sub/__init__.py) -> its file."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(base: str, module: str | None) -> str:
    """Absolute name of `from <dots><module> import ...`; `base` is the package the dots start from."""
    return f"{base}.{module}" if module else base


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """prune_core modules that `name` imports, at any level of its code."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()

    def add(target: str) -> None:
        # `import prune_core.a.b` and `from prune_core.a.b import c` load the packages
        # on the way; keep the deepest name that is a module of ours.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = _resolve(base, node.module)
            else:
                source = node.module or ""
                if source != PACKAGE and not source.startswith(PACKAGE + "."):
                    continue
            for alias in node.names:
                # `from . import x` / `from .pkg import mod` name a module when one exists.
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(a shortest cycle [a, b, ..., a], all its modules) per strongly connected component
    that holds a cycle (Tarjan), sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        # Shortest way back to `start` inside the component (breadth first).
        parent, frontier = {start: None}, [start]
        while start not in parent or parent[start] is None:
            step = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        parent[start] = v
                        break
                    if w not in parent:
                        parent[w] = v
                        step.append(w)
                if parent[start] is not None:
                    break
            frontier = step
        path, v = [start], parent[start]
        while v != start:
            path.append(v)
            v = parent[v]
        cycles.append(([start, *reversed(path[1:]), start], sorted(component)))
    return sorted(cycles)


def test_no_import_cycle_in_package():
    # The checker itself: it sees a known cycle and passes a chain.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [(["a", "b", "c", "a"], ["a", "b", "c"])]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _import_graph()
    assert f"{PACKAGE}.selection" in graph and f"{PACKAGE}.selection" in graph[PACKAGE], "module scan is broken"
    cycles = _cycles(graph)
    assert not cycles, "import cycles in prune_core (imports inside functions count):\n" + "\n".join(
        f"{' -> '.join(cycle)}   (all modules of this knot: {', '.join(knot)})" for cycle, knot in cycles)


def test_no_module_over_line_limit():
    too_long = {}
    for name, path in _module_files().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long[name] = lines
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
