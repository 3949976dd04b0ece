"""The core is pure: it imports with every I/O library blocked.

A subprocess installs a meta-path finder that refuses the database drivers, HTTP
clients, LLM SDKs and the web framework outright, and the os-level I/O modules
(sockets, subprocesses, asyncio, ...) when an everruns module imports them (the
standard library and pydantic import `socket` for their own reasons). Then it
imports every module of `everruns.core`: any of them reaching for I/O fails.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import everruns.core

BLOCKED = (
    "sqlalchemy",
    "aiosqlite",
    "psycopg",
    "httpx",
    "openai",
    "anthropic",
    "mcp",
    "fastapi",
    "starlette",
    "uvicorn",
    "cryptography",
)
# Refused when imported by everruns code itself.
BLOCKED_DIRECT = ("socket", "subprocess", "asyncio", "ssl", "select", "selectors", "shutil")
CORE_MODULES = sorted(
    f"everruns.core.{m.name}" for m in pkgutil.iter_modules(everruns.core.__path__)
)

SCRIPT = textwrap.dedent(
    """
    import importlib, sys

    BLOCKED = {blocked!r}
    BLOCKED_DIRECT = {direct!r}

    def matches(name, prefixes):
        return any(name == b or name.startswith(b + ".") for b in prefixes)

    def importer():  # the module whose import statement is being executed
        frame = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(("importlib", "_frozen_importlib")):
                return module
            frame = frame.f_back
        return ""

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if matches(name, BLOCKED) or (
                matches(name, BLOCKED_DIRECT) and importer().startswith("everruns")
            ):
                raise ImportError(f"I/O module {{name!r}} imported by the pure core")
            return None

    for name in list(sys.modules):
        if matches(name, BLOCKED + BLOCKED_DIRECT):
            del sys.modules[name]
    sys.meta_path.insert(0, Refuse())
    for module in {modules!r}:
        importlib.import_module(module)
    loaded = sorted(n for n in sys.modules if n.startswith("everruns."))
    print("\\n".join(loaded))
    """
)


def _run(modules: list[str]) -> subprocess.CompletedProcess[str]:
    script = SCRIPT.format(blocked=BLOCKED, direct=BLOCKED_DIRECT, modules=modules)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_core_imports_with_io_blocked() -> None:
    assert {"everruns.core.events", "everruns.core.state", "everruns.core.projection"} <= set(
        CORE_MODULES
    )
    result = _run(CORE_MODULES)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert set(CORE_MODULES) <= loaded
    # Nothing outside the core but the spec and the errors came along.
    assert loaded - set(CORE_MODULES) <= {"everruns.core", "everruns.spec", "everruns.errors"}, (
        loaded
    )


def test_the_blocker_blocks() -> None:
    """The same harness fails for modules that do I/O (so the test above can fail)."""
    for module in ("everruns.store.journal", "everruns.engine.models"):
        result = _run([module])
        assert result.returncode != 0, module
        assert "imported by the pure core" in result.stderr, module
