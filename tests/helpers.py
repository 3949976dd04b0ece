"""Helpers for tests that drive real `everruns` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

TOOLING = Path(__file__).parent / "tooling"


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EVERRUNS_DATABASE_URL"] = db_url
    env["PYTHONPATH"] = os.pathsep.join([str(TOOLING), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.pop("EVERRUNS_CRASH_AT", None)
    env["EVERRUNS_SETTINGS"] = str(TOOLING / "settings.yaml")
    env.update(extra)
    return env


def write_agent(
    path: Path, responses: list[dict[str, Any]], tools: list[Any] | None = None, **fields: Any
) -> Path:
    spec = {
        "name": fields.pop("name", "test-agent"),
        "model": {"provider": "scripted", "responses": responses},
        "tools": tools or [],
        **fields,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "everruns.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(
    env: dict[str, str], *args: str, cwd: Path | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "everruns.cli", "worker", *args],
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=out,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 30,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
