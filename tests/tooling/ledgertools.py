"""Test tools with observable side effects: each call appends a line to a ledger file.

The ledger path comes from EVERRUNS_TEST_LEDGER. Each tool calls the `tool.mid`
crash point after its side effect and before it returns, so a crash test can
kill the worker in the middle of a tool.
"""

from __future__ import annotations

import json
import os
import time

from everruns import ToolContext, tool
from everruns.engine import crashpoints


def _record(tool_name: str, key: str, ctx: ToolContext, sleep: float) -> str:
    if sleep:
        time.sleep(sleep / 2)
    path = os.environ.get("EVERRUNS_TEST_LEDGER")
    if path:
        entry = {
            "tool": tool_name,
            "key": key,
            "call_id": ctx.tool_call_id,
            "idempotency_key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "pid": os.getpid(),
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    crashpoints.hit("tool.mid")
    if sleep:
        time.sleep(sleep / 2)
    return f"{tool_name} recorded {key}"


@tool(effect="pure")
def pure_record(key: str, ctx: ToolContext, sleep: float = 0.0) -> str:
    """Record a key (declared pure)."""
    return _record("pure_record", key, ctx, sleep)


@tool(effect="idempotent")
def idem_record(key: str, ctx: ToolContext, sleep: float = 0.0) -> str:
    """Record a key (declared idempotent)."""
    return _record("idem_record", key, ctx, sleep)


@tool(effect="at_most_once")
def amo_record(key: str, ctx: ToolContext, sleep: float = 0.0) -> str:
    """Record a key (declared at_most_once)."""
    return _record("amo_record", key, ctx, sleep)


@tool
def undeclared_record(key: str, ctx: ToolContext) -> str:
    """Record a key (no effect declared: at_most_once by default)."""
    return _record("undeclared_record", key, ctx, 0.0)


@tool(effect="pure")
def explode(message: str) -> str:
    """Always raises."""
    raise RuntimeError(message)
