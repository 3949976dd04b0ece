"""Example user code for replay tests: a 10-step agent that counts to 9 with a tool."""

from __future__ import annotations

from everruns import tool
from everruns.testing import ModelRequest, ToolCall


@tool(effect="pure")
def count(n: int) -> str:
    """Say a number."""
    return f"counted {n}"


@tool(effect="pure", name="count")
def count_loudly(n: int) -> str:
    """Say a number out loud."""
    return f"counted {n}"


def _counted(request: ModelRequest) -> int:
    return sum(1 for m in request.messages if m["role"] == "tool")


def respond(request: ModelRequest) -> str | list[ToolCall]:
    """Count to 9, one tool call per step, then say so: 10 LLM steps."""
    done = _counted(request)
    if done < 9:
        return [ToolCall("count", {"n": done + 1})]
    return "counted to 9"


def respond_short(request: ModelRequest) -> str | list[ToolCall]:
    """A different model: counts to 3 only."""
    done = _counted(request)
    if done < 3:
        return [ToolCall("count", {"n": done + 1})]
    return "counted to 3"
