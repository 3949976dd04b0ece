"""Shared plumbing: specs from any form, databases, worker subprocesses, sync wrappers."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from everruns.spec import AgentSpec, load_spec, parse_spec
from everruns.testing import effects

T = TypeVar("T")
P = ParamSpec("P")
SpecLike = AgentSpec | str | Path | dict[str, Any]
KILLED = -signal.SIGKILL


def as_spec(spec: SpecLike) -> AgentSpec:
    if isinstance(spec, AgentSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    return load_spec(spec)


def workdir(path: str | Path | None, prefix: str) -> Path:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    return Path(tempfile.mkdtemp(prefix=prefix))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, also from inside a running event loop (async tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="everruns-testing")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def sync_form(afn: Callable[P, Coroutine[Any, Any, T]], name: str, doc: str) -> Callable[P, T]:
    """The blocking twin of an async API function (`acrash_matrix` → `crash_matrix`):
    the same parameters, written once, run with `run_sync`."""

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(afn(*args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__module__ = afn.__module__
    call.__doc__ = doc
    call.__signature__ = inspect.signature(afn)  # type: ignore[attr-defined]  # for help()
    return call


def worker_env(ledger: Path | None, crash_at: str | None = None) -> dict[str, str]:
    """The environment of a plugin worker: this process's import path, a ledger, a point."""
    env = dict(os.environ)
    env.pop(effects.CRASH_ENV, None)
    paths = [os.getcwd(), *(p for p in sys.path if p and os.path.isdir(p))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if ledger is not None:
        env[effects.LEDGER_ENV] = str(ledger)
    if crash_at:
        env[effects.CRASH_ENV] = crash_at
    return env


async def run_worker(
    url: str, run_id: str, env: dict[str, str], log: Path, lease_ttl: float, timeout: float
) -> int:
    """Start `python -m everruns.testing.worker` and wait for it; its exit code."""
    out = await asyncio.to_thread(open, log, "ab")
    with out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "everruns.testing.worker",
            url,
            run_id,
            "--lease-ttl",
            f"{lease_ttl:g}",
            "--poll-interval",
            "0.1",
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise WorkerTimeout(f"the worker did not finish within {timeout:g}s", log) from None


class WorkerTimeout(Exception):
    def __init__(self, message: str, log: Path):
        super().__init__(f"{message}\n{tail(log)}")


def tail(log: Path, lines: int = 25) -> str:
    if not log.exists():
        return "(no worker log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
