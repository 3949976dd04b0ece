"""Which tool processes a run has running, so a new worker can kill leftovers.

Each tool process group a run starts (the shell's sandbox) is recorded as one
small file in `<workspace root>/<run_id>.procs/`, named `<pid>-<start time>`,
and removed when the process ends. A worker that claims the run calls `reap()`
before it touches the workspace: every recorded group still alive (same pid
*and* same start time, so a recycled pid is never hit) is killed with SIGKILL.

Tool processes normally die with their worker already (PR_SET_PDEATHSIG and
bwrap's `--die-with-parent`); the reaper covers a worker that lost its lease
but still lives (paused, partitioned from the database) and any path the
kernel's parent-death signal misses. It works across worker processes of one
machine that share the workspace root; it cannot reach other machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any


def registry_for(workspace: Path) -> Path:
    """The folder recording a run's tool processes (next to, not inside, its workspace)."""
    return workspace.parent / f"{workspace.name}.procs"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        fields = stat.rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie runs nothing
    return int(fields[19])


def record(registry: Path, pid: int, **info: Any) -> Path | None:
    """Note that process group `pid` runs for this run; returns the note to `forget`."""
    started = start_time(pid)
    if started is None:
        return None
    registry.mkdir(parents=True, exist_ok=True)
    note = registry / f"{pid}-{started}"
    data = {"pid": pid, "start": started, "host": socket.gethostname(), **info}
    note.write_text(json.dumps(data), encoding="utf-8")
    return note


def forget(note: Path | None) -> None:
    if note is not None:
        with contextlib.suppress(FileNotFoundError):
            note.unlink()


def reap(registry: Path) -> list[dict[str, Any]]:
    """Kill the recorded process groups that still run; returns what was found.

    Each entry: the recorded `pid`, `call_id` and `worker_pid`, and `killed`
    (False: it had already ended, e.g. died with its worker).
    """
    if not registry.is_dir():
        return []
    found: list[dict[str, Any]] = []
    for note in sorted(registry.iterdir()):
        try:
            data = json.loads(note.read_text(encoding="utf-8"))
            pid, started = int(data["pid"]), int(data["start"])
        except (OSError, ValueError, KeyError, TypeError):
            forget(note)
            continue
        alive = data.get("host") == socket.gethostname() and start_time(pid) == started
        if alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        found.append(
            {
                "pid": pid,
                "call_id": data.get("call_id"),
                "worker_pid": data.get("worker_pid"),
                "killed": alive,
            }
        )
        forget(note)
    with contextlib.suppress(OSError):
        registry.rmdir()
    return found
