"""Fail when hpdm's modules import each other in a circle, or when anything imports `hpdm.cli`.

Every import counts, also those inside functions (they hide circles from Python, not from a
reader). `hpdm.x.y` importing `hpdm.x` (its package `__init__`) is not an edge: a package's
modules may use it. Run: `python .ci/check_imports.py` (CI does, before the tests).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ENTRY_POINTS = {"hpdm.cli"}  # imported by nobody: it is the command line


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """hpdm modules that `path` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `from hpdm.data.video import read_video` -> hpdm.data.video
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph(src: Path = SRC, package: str = "hpdm") -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in (src / package).rglob("*.py")}
    modules = set(files)
    edges = {m: imports(p, m, modules) for m, p in files.items()}
    for m in edges:  # a package's own __init__ is a namespace, not a dependency of its modules
        edges[m] = {t for t in edges[m] if not (m.startswith(t + ".") and files[t].name == "__init__.py")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def problems(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for comp in cycles(edges):
        inside = [f"{a} -> {b}" for a in comp for b in sorted(edges[a]) if b in comp]
        found.append("import circle among " + ", ".join(comp) + ":\n    " + "\n    ".join(inside))
    for m, targets in sorted(edges.items()):
        for t in sorted(targets & ENTRY_POINTS):
            found.append(f"{m} imports {t}: the command line is imported by nobody; move what it needs")
    return found


def main() -> int:
    edges = graph()
    found = problems(edges)
    if found:
        print("\n".join(found))
        return 1
    print(f"imports: {len(edges)} modules, no circle, nothing imports {', '.join(sorted(ENTRY_POINTS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
