"""The import graph of the package, read from the source (every import, function-local ones too: a
lazy import is still an arrow): no circles, and the one-way doors of the design.

Lazy package exports (``_lazy.lazy_exports`` tables) are not arrows: they import on first use of a
name, never at import time. A package's own ``__init__`` is not an arrow either (Python imports it
before any of its modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "sparse_transformer"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its source."""
    base = name if _is_package(name) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import submodule`
    ours = {m for m in found if m in MODULES}
    return {m for m in ours if m != name and not name.startswith(m + ".")}  # not itself, not its packages


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(prefix: str, name: str) -> bool:
    return name == f"{PKG}.{prefix}" or name.startswith(f"{PKG}.{prefix}.")


def _arrows(src: str, dst: str) -> list[str]:
    """Imports from ``src`` into ``dst``; a ``python -m`` entry (``__main__``) is a command, not part of ``src``."""
    return sorted(f"{a} -> {b}" for a, deps in GRAPH.items() if _in(src, a) and not a.endswith(".__main__")
                  for b in deps if _in(dst, b))


def test_the_graph_is_read():
    assert GRAPH[f"{PKG}.training.module"] >= {f"{PKG}.model", f"{PKG}.training.fault", f"{PKG}.checkpoint"}
    assert f"{PKG}.cli.train" in GRAPH[f"{PKG}.train"]


def test_no_import_circles_at_all():
    assert _circles(GRAPH) == []


@pytest.mark.parametrize("src, dst", [
    ("attention", "training"), ("attention", "cli"), ("attention", "model"), ("attention", "data"),
    ("training", "cli"), ("model", "training"), ("model", "cli"), ("model", "data"),
    ("data", "model"), ("data", "training"), ("data", "cli"), ("config", "training"), ("config", "cli"),
    ("analysis", "training"), ("analysis", "cli"),
])
def test_one_way_doors(src, dst):
    assert _arrows(src, dst) == []


@pytest.mark.parametrize("leaf", ["media", "files"])
def test_leaves_import_nothing_of_ours(leaf):
    assert GRAPH[f"{PKG}.{leaf}"] == set()


def test_only_the_entry_points_import_cli():
    """Nothing but the commands' ``python -m`` entry modules (and cli itself) imports cli/."""
    users = {a for a, deps in GRAPH.items() if any(_in("cli", b) for b in deps) and not _in("cli", a)}
    assert users <= {f"{PKG}.{m}" for m in ("train", "sample", "evaluate", "sweep", "data.__main__")}
