"""What an interrupt journals (pure): each unresolved tool call's result by effect class,
and the `run.interrupted` summary of what was cut.

A call that had started: `pure`/`idempotent` ones were cancelled (safe: they may be run
again); an `at_most_once` one may have had its effect, so its outcome is unknown, as after a
crash. Calls not started are skipped. The LLM call in flight, if any, is named in the summary
(its answer was never journaled, so nothing of it enters the conversation).
"""

from __future__ import annotations

from typing import Any

from everruns.core.events import (
    SKIPPED_MESSAGE,
    TOOL_FAILED,
    USER_CANCELLED_MESSAGE,
    USER_INTERRUPTED_MESSAGE,
    CallStatus,
)
from everruns.core.state import State


def cut(
    state: State, effects: dict[str, str], by: str = "user"
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """(tool results to journal, the `run.interrupted` payload) for `state`."""
    results: list[tuple[str, dict[str, Any]]] = []
    tools = []
    for call in state.calls:
        if call.status == CallStatus.DONE:
            continue
        base = {"call_id": call.id, "name": call.name}
        effect = call.effect or effects.get(call.name, "at_most_once")
        if call.status == CallStatus.STARTED:
            unknown = effect == "at_most_once"
            error = USER_INTERRUPTED_MESSAGE if unknown else USER_CANCELLED_MESSAGE
            results.append((TOOL_FAILED, {**base, "error": error, "interrupted": True}))
            outcome = "unknown" if unknown else "cancelled"
        else:
            results.append((TOOL_FAILED, {**base, "error": SKIPPED_MESSAGE, "skipped": True}))
            outcome = "skipped"
        tools.append({**base, "effect": effect, "outcome": outcome})
    summary: dict[str, Any] = {"by": by}
    if state.llm_in_flight:
        summary["llm"] = {"attempt": state.attempt, "model": state.model}
    if tools:
        summary["tools"] = tools
    return results, summary
