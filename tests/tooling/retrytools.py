"""Test tools for durable tool retries: each attempt appends a line to the ledger.

`flaky_once` raises `RetryLater(after=...)` on its first attempt and succeeds after;
it is `at_most_once`, so a retry proves `RetryLater` means "not done".
"""

from __future__ import annotations

import json
import os

from everruns import RetryLater, ToolContext, tool


def _log(entry: dict[str, object]) -> None:
    path = os.environ.get("EVERRUNS_TEST_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


@tool(effect="at_most_once")
def flaky_once(key: str, ctx: ToolContext, after: float = 3.0) -> str:
    """Fail the first attempt with RetryLater, succeed on the next."""
    _log(
        {
            "tool": "flaky_once",
            "key": key,
            "attempt": ctx.attempt,
            "idempotency_key": ctx.idempotency_key,
            "pid": os.getpid(),
        }
    )
    ctx.progress(ctx.attempt, 2, f"attempt {ctx.attempt}")
    if ctx.attempt == 1:
        raise RetryLater(after=after, reason="upstream busy")
    return f"done {key} on attempt {ctx.attempt}"
