"""Test tools that report progress or fail halfway (tests/system/test_ui_files.py,
tests/engine/test_tool_progress.py).

`tick(done, total, gate)` reports `ctx.progress(done, total, note)` every 0.1 s until the
file `gate` exists, then returns: the page can watch the live value while the call runs
(a live event is not replayed to a page that connects later, so it is repeated). A plain
function, so it runs in a thread: its progress reaches the event loop from there.
"""

from __future__ import annotations

import time
from pathlib import Path

from everruns import ToolContext, ToolError, tool


@tool(effect="idempotent")
def tick(done: int, total: int, gate: str, ctx: ToolContext) -> str:
    """Report done of total until the gate file exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise ToolError(f"the gate {gate} never opened")
        ctx.progress(done, total, f"{done} of {total} records")
        time.sleep(0.1)
    ctx.progress(done, total, f"{done} of {total} records")
    return f"stopped at {done} of {total}"


@tool(effect="idempotent")
def count(n: int, ctx: ToolContext) -> str:
    """Count to n, reporting each number as progress."""
    for i in range(1, n + 1):
        ctx.progress(i, n, f"counted {i}")
        time.sleep(0.02)
    return f"counted to {n}"


@tool(effect="idempotent", workspace=True)
def half_done(ctx: ToolContext) -> str:
    """Write notes/partial.txt, then fail: the change is journaled with the failure."""
    assert ctx.workspace is not None
    (ctx.workspace / "notes" / "partial.txt").write_text("half of it\n", encoding="utf-8")
    raise ToolError("stopped halfway")
