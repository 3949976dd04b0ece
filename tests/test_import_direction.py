"""The direction of imports between the packages (docs/architecture.md), and no cycles.

    core  <-  store  <-  engine  <-  api / cli

Imports are read with `ast` from every module under src/everruns, including the
ones inside functions and under TYPE_CHECKING: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "everruns"


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The everruns module that `name` (a module, or a name inside one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    deps: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(_resolve(a.name) for a in node.names if a.name.startswith("everruns"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            if not base.startswith("everruns"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                deps.add(_resolve(full) if full in MODULES else _resolve(base))
    deps.discard(None)
    deps.discard(module)
    return {d for d in deps if d is not None}


GRAPH = {module: _imports(module) for module in MODULES}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(
    layer: str, allowed: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()
) -> list[str]:
    bad = []
    for module, deps in sorted(GRAPH.items()):
        if not _in(module, layer):
            continue
        for dep in sorted(deps):
            if allowed and not _in(dep, *allowed):
                bad.append(f"{module} imports {dep}")
            if forbidden and _in(dep, *forbidden):
                bad.append(f"{module} imports {dep}")
    return bad


def test_the_graph_is_read() -> None:
    assert "everruns.core.state" in GRAPH["everruns.core.decide"]
    assert "everruns.store.journal" in GRAPH["everruns.store.store"]
    assert "everruns.store" in GRAPH["everruns.engine.runner"]


def test_core_imports_only_core_spec_and_errors() -> None:
    allowed = ("everruns.core", "everruns.spec", "everruns.errors")
    assert _violations("everruns.core", allowed=allowed) == []
    assert _violations("everruns.spec", allowed=allowed) == []
    assert GRAPH["everruns.errors"] == set()


def test_store_never_imports_engine_api_or_cli() -> None:
    upper = ("everruns.engine", "everruns.api", "everruns.cli", "everruns.ui", "everruns.client")
    assert _violations("everruns.store", forbidden=upper) == []


def test_engine_never_imports_api_or_cli() -> None:
    upper = ("everruns.api", "everruns.cli", "everruns.ui")
    assert _violations("everruns.engine", forbidden=upper) == []


RETIRED = ("everruns.journal", "everruns.schedule", "everruns.engine.backoff")


def test_the_retired_shims_stay_gone() -> None:
    """The vocabulary lives in `everruns.core.*`; no re-export module under the old names."""
    assert [m for m in RETIRED if m in MODULES] == []


def test_nothing_imports_a_retired_shim() -> None:
    """No import statement in src, tests, bench or examples names one (read raw, unresolved)."""
    root = SRC.parents[1]
    files = [p for d in ("src", "tests", "bench", "examples") for p in (root / d).rglob("*.py")]
    bad = []
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            bad += [f"{path.relative_to(root)} imports {n}" for n in names if n in RETIRED]
    assert bad == []


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("module", ["everruns.store.store", "everruns.engine.runner"])
def test_cycle_detection_works(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A back edge added by hand is reported (so the test above can fail)."""
    dep = sorted(GRAPH[module])[0]
    monkeypatch.setitem(GRAPH, dep, GRAPH[dep] | {module})
    assert any(module in c and dep in c for c in _cycles())
