"""A readable diff of two runs: steps, tokens, cost, result, and the transcripts."""

from __future__ import annotations

import difflib
import json
from typing import Any

from everruns.core.events import Event
from everruns.core.state import State, fold, transcript


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "…"


def transcript_lines(messages: list[dict[str, Any]]) -> list[str]:
    """One line per message, tool call and tool result."""
    lines = []
    for m in messages:
        if m["role"] == "assistant":
            if m.get("content"):
                lines.append(f"assistant: {_short(m['content'])}")
            for call in m.get("tool_calls") or []:
                lines.append(f"tool call {call['id']}: {call['name']}({_short(call['arguments'])})")
        elif m["role"] == "tool":
            kind = "tool error" if m.get("is_error") else "tool result"
            lines.append(f"{kind} {m.get('tool_call_id')} {m.get('name')}: {_short(m['content'])}")
        else:
            lines.append(f"{m['role']}: {_short(m.get('content'))}")
    return lines


def summary(state: State) -> dict[str, Any]:
    return {
        "status": state.status,
        "steps": state.steps,
        "llm_calls": state.llm_calls,
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "cost_usd": round(state.cost_usd, 6),
        "result": state.result,
    }


def diff_runs(
    a: list[Event], b: list[Event], *, label_a: str = "a", label_b: str = "b"
) -> tuple[bool, str]:
    """(same, text): whether the two runs' summaries and transcripts are equal, and the diff."""
    state_a, state_b = fold(a), fold(b)
    sum_a, sum_b = summary(state_a), summary(state_b)
    lines = []
    for key in sum_a:
        mark = "  " if sum_a[key] == sum_b[key] else "≠ "
        lines.append(f"{mark}{key}: {_short(sum_a[key])} | {_short(sum_b[key])}")
    text_a = transcript_lines(transcript(state_a))
    text_b = transcript_lines(transcript(state_b))
    body = list(difflib.unified_diff(text_a, text_b, label_a, label_b, lineterm="", n=2))
    same = sum_a == sum_b and text_a == text_b
    head = f"{label_a} | {label_b}: " + ("identical" if same else "different")
    out = [head, *lines]
    out += ["", *body] if body else ["", "transcripts identical"]
    return same, "\n".join(out)
