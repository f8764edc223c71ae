"""No module of ours imports itself through others: read every import statement with `ast` (lazy
imports inside functions and TYPE_CHECKING blocks included: a circle that is only broken by
importing late is still a circle), resolve it to one of our modules, and look for cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from _kit.paths import ROOT

PACKAGES = ("emshield", "log_server", "verifier", "witness")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of our packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports anywhere in its text."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one, else pkg.
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of ours, or a name in one of ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a three-module circle and a self-contained tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_relative_and_lazy_imports_are_resolved(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("from . import x\nfrom .y import z\ndef f():\n    from ..top import t\n")
    known = {"pkg.sub.m", "pkg.sub.x", "pkg.sub.y", "pkg.top"}
    assert _imports("pkg.sub.m", mod, known) == {"pkg.sub.x", "pkg.sub.y", "pkg.top"}


def test_no_module_imports_in_a_circle() -> None:
    modules = _modules()
    assert len(modules) > 100, "the module walk found too little to be meaningful"
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 200, "the import walk found too few imports to be meaningful"
    assert _cycles(graph) == [], "modules that import each other (directly or through others)"
