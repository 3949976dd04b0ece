"""Context selection: what the model is sent, how big it is, and where compaction may cut."""

from __future__ import annotations

from typing import Any

from everruns.core.state import State

CONTINUE_PROMPT = (
    "Your previous answer was cut off at the output token limit. Continue exactly where it "
    "stopped, without repeating anything."
)
SUMMARY_HEADER = "[Summary of the earlier conversation, compacted to fit the context window]"


def model_view(state: State) -> list[dict[str, Any]]:
    """What the model is sent: the summary of compacted messages (with the run's notes,
    kept verbatim), then the recent messages. The journal keeps everything."""
    if state.summary is None:
        return list(state.messages)
    return [model_view_head(state), *state.messages[state.compacted_until :]]


def model_view_head(state: State) -> dict[str, Any]:
    """The message that stands for the compacted part of the conversation."""
    parts = [SUMMARY_HEADER, state.summary or ""]
    if state.notes:
        parts.append("Progress notes so far:\n" + "\n".join(f"- {n}" for n in state.notes))
    return {"role": "user", "content": "\n\n".join(parts)}


def _chars(message: dict[str, Any]) -> int:
    return len(str(message.get("content") or "")) + len(str(message.get("tool_calls") or ""))


def estimate_tokens(system: str, messages: list[dict[str, Any]]) -> int:
    """A provider-neutral estimate (about 4 characters a token)."""
    return (len(system) + sum(_chars(m) for m in messages)) // 4 + 16


def context_tokens(system: str, state: State) -> int:
    """`estimate_tokens(system, model_view(state))` without building the view or walking
    the conversation: a running prefix sum over the messages (amortized O(1) per call)."""
    prefix = state.char_prefix
    for message in state.messages[len(prefix) - 1 :]:
        prefix.append(prefix[-1] + _chars(message))
    if state.summary is None:
        return (len(system) + prefix[-1]) // 4 + 16
    recent = prefix[-1] - prefix[state.compacted_until]
    head = _chars(model_view_head(state))
    return (len(system) + head + recent) // 4 + 16


def compaction_cut(state: State, keep_recent: int) -> int | None:
    """Index up to which messages can be summarized without splitting a tool call from
    its results; None when there is nothing (more) to compact."""
    cut = len(state.messages) - keep_recent
    while cut > state.compacted_until and state.messages[cut]["role"] == "tool":
        cut -= 1
    return cut if cut > state.compacted_until else None


def tool_called_this_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether a tool result follows the last user message. A forced `tool_choice`
    (`required` or a name) holds only until then: the turn's later steps leave the choice to
    the model (like the OpenAI Agents SDK's `reset_tool_choice`), else a forced run calls
    tools until `max_steps` and never answers."""
    for m in reversed(messages):
        if m["role"] == "tool":
            return True
        if m["role"] == "user":
            return False
    return False
