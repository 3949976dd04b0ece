"""Outcomes: a grader model checks the agent's final answer against a rubric (pure).

`decide` asks for a `Grade` when an agent with `outcome:` has an ungraded final answer; the
engine sends `grader_messages` to the grader's model, reads its reply with `parse_grade`,
and journals `outcome.graded` with `verdict(...)`. A failing grade before the last iteration
is `revising`: the fold turns its feedback into a user message and the agent answers again.
"""

from __future__ import annotations

import json
import re
from typing import Any

SATISFIED = "satisfied"
NOT_SATISFIED = "not_satisfied"
REVISING = "revising"

GRADER_SYSTEM = (
    "You grade an AI agent's final answer against a rubric. Reply with JSON only: "
    '{"pass": true|false, "feedback": "what to fix, if anything"}.'
)


def grader_messages(rubric: str, task: str | None, answer: str) -> list[dict[str, Any]]:
    """The grader's conversation: the rubric, the task, the answer."""
    text = f"Rubric:\n{rubric}\n\nTask:\n{task or '(none)'}\n\nAnswer to grade:\n{answer}"
    return [{"role": "user", "content": text}]


_VERDICT_WORD = re.compile(r"^\s*(pass|passed|fail|failed)\b[\s:.-]*", re.IGNORECASE)


def parse_grade(reply: str) -> tuple[bool, str]:
    """(passed, feedback) from the grader's reply: JSON `{"pass": ..., "feedback": ...}`,
    or text starting with PASS/FAIL. Anything else fails, quoting the reply as feedback."""
    text = reply.strip()
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(text[start : end + 1])
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("pass"), bool):
            return bool(data["pass"]), str(data.get("feedback") or "")
    match = _VERDICT_WORD.match(text)
    if match:
        return match.group(1).lower().startswith("pass"), text[match.end() :].strip()
    return False, f"the grader's reply was not a verdict: {text[:500]}"


def verdict(passed: bool, iteration: int, max_iterations: int) -> str:
    """satisfied, not_satisfied (the last allowed answer failed) or revising."""
    if passed:
        return SATISFIED
    return NOT_SATISFIED if iteration >= max_iterations else REVISING
