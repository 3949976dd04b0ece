"""Context selection: what the model is sent, how big it is, and where compaction may cut."""

from __future__ import annotations

from typing import Any

from everruns.core.state import State

SUMMARY_HEADER = "[Summary of the earlier conversation, compacted to fit the context window]"


def model_view(state: State) -> list[dict[str, Any]]:
    """What the model is sent: the summary of compacted messages (with the run's notes,
    kept verbatim), then the recent messages. The journal keeps everything."""
    if state.summary is None:
        return list(state.messages)
    parts = [SUMMARY_HEADER, state.summary]
    if state.notes:
        parts.append("Progress notes so far:\n" + "\n".join(f"- {n}" for n in state.notes))
    head = {"role": "user", "content": "\n\n".join(parts)}
    return [head, *state.messages[state.compacted_until :]]


def estimate_tokens(system: str, messages: list[dict[str, Any]]) -> int:
    """A provider-neutral estimate (about 4 characters a token)."""
    chars = len(system) + sum(
        len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages
    )
    return chars // 4 + 16


def compaction_cut(state: State, keep_recent: int) -> int | None:
    """Index up to which messages can be summarized without splitting a tool call from
    its results; None when there is nothing (more) to compact."""
    cut = len(state.messages) - keep_recent
    while cut > state.compacted_until and state.messages[cut]["role"] == "tool":
        cut -= 1
    return cut if cut > state.compacted_until else None
