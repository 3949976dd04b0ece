"""The `memory` built-in: notes an agent keeps across its runs.

`remember` stores a note for every later run of the same agent (a scheduled
agent's next run sees what the previous one learned); it is idempotent through
the call's idempotency key, so a retried call stores the note once. `recall` is
pure: it reads the agent's newest notes, oldest first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from everruns.tools.base import ToolContext, ToolError


def _memory(ctx: ToolContext) -> tuple[Any, str]:
    if ctx.store is None or not ctx.agent:
        raise ToolError("memory is only available inside a run executed by everruns")
    return ctx.store, ctx.agent


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


async def remember(text: str, ctx: ToolContext) -> str:
    """Remember a note for your future runs (they can read it with `recall`).

    Args:
        text: what to remember, e.g. a fact learned or where you left off
    """
    store, agent = _memory(ctx)
    from everruns.store import StoreError

    try:
        note = await store.remember(
            agent, text, run_id=ctx.run_id, idempotency_key=ctx.idempotency_key
        )
    except StoreError as exc:
        raise ToolError(str(exc)) from None
    return f"remembered ({note['id']})"


async def recall(ctx: ToolContext, limit: int = 50) -> list[dict[str, Any]] | str:
    """Read the notes remembered by this agent's runs (this one and earlier ones), oldest first.

    Args:
        limit: at most this many of the newest notes
    """
    store, agent = _memory(ctx)
    if limit < 1:
        raise ToolError("limit must be at least 1")
    notes = await store.recall(agent, limit=min(limit, 500))
    if not notes:
        return "(no notes yet)"
    return [{"text": n["text"], "run_id": n["run_id"], "at": _iso(n["ts"])} for n in notes]
