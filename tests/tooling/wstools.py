"""Test tools for tests/tools/test_tools_engine.py: workspace, timeouts, big outputs.

`ws_slow` records what it finds in the run's workspace to the ledger
(EVERRUNS_TEST_LEDGER), writes `partial.txt`, hits the `tool.mid` crash point,
sleeps, and only then renames `partial.txt` to its target: a worker killed at
`tool.mid` leaves a half-done write on its own disk, which must never reach the
run's journaled workspace.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from everruns import ToolContext, ToolError, tool
from everruns.engine import crashpoints


def _ledger(entry: dict[str, object]) -> None:
    path = os.environ.get("EVERRUNS_TEST_LEDGER")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _snapshot(root: Path) -> dict[str, str]:
    """Every regular file under root (symlinks skipped) with its text."""
    files = {}
    for item in sorted(root.rglob("*")):
        if item.is_file() and not item.is_symlink():
            files[item.relative_to(root).as_posix()] = item.read_text(errors="replace")
    return files


@tool(effect="idempotent", workspace=True)
def ws_slow(name: str, content: str, ctx: ToolContext, sleep: float = 0.3) -> str:
    """Write a workspace file slowly (via partial.txt), recording what it saw first."""
    if ctx.workspace is None:
        raise ToolError("no workspace")
    root = ctx.workspace
    _ledger(
        {
            "tool": "ws_slow",
            "call_id": ctx.tool_call_id,
            "attempt": ctx.attempt,
            "pid": os.getpid(),
            "root": str(root),
            "listing": sorted(os.listdir(root)),
            "files": _snapshot(root),
        }
    )
    partial = root / "partial.txt"
    partial.write_text(content, encoding="utf-8")
    crashpoints.hit("tool.mid")
    time.sleep(sleep)
    os.replace(partial, root / name)
    return f"wrote {name}"


@tool(effect="idempotent")
async def nap(seconds: float, ctx: ToolContext) -> str:
    """Sleep (asynchronously) and record the call."""
    _ledger({"tool": "nap", "call_id": ctx.tool_call_id, "attempt": ctx.attempt, "at": "start"})
    await asyncio.sleep(seconds)
    _ledger({"tool": "nap", "call_id": ctx.tool_call_id, "attempt": ctx.attempt, "at": "end"})
    return f"rested {seconds}s"


def big_text(size: int) -> str:
    """A deterministic text of exactly `size` characters (numbered lines)."""
    lines = []
    total = 0
    n = 0
    while total < size:
        line = f"line {n:07d} of the big output\n"
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines)[:size]


@tool(effect="pure")
def big(size: int) -> str:
    """Return a text of `size` characters."""
    return big_text(size)


@tool(effect="pure")
def notes_probe(ctx: ToolContext) -> list[str]:
    """Return (and record) the notes the engine passed to this call."""
    _ledger({"tool": "notes_probe", "call_id": ctx.tool_call_id, "notes": list(ctx.notes)})
    return list(ctx.notes)


def _early(tool_name: str, key: str, ctx: ToolContext, sleep: float) -> str:
    """Record the call first, then take `sleep` seconds: the ledger shows every start."""
    _ledger(
        {
            "tool": tool_name,
            "key": key,
            "call_id": ctx.tool_call_id,
            "idempotency_key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "pid": os.getpid(),
        }
    )
    time.sleep(sleep)
    return f"{tool_name} recorded {key}"


@tool(effect="idempotent")
def early_idem(key: str, ctx: ToolContext, sleep: float = 0.0) -> str:
    """Record a key at once, then sleep (declared idempotent)."""
    return _early("early_idem", key, ctx, sleep)


@tool(effect="at_most_once")
def early_amo(key: str, ctx: ToolContext, sleep: float = 0.0) -> str:
    """Record a key at once, then sleep (declared at_most_once)."""
    return _early("early_amo", key, ctx, sleep)
