"""The context estimate is the same number whether computed by walking the model's view or
from the running prefix sums, at every point of a growing, compacted run."""

from __future__ import annotations

import random

from everruns.core.context import context_tokens, estimate_tokens, model_view
from everruns.core.state import State


def test_running_estimate_equals_the_full_walk() -> None:
    rng = random.Random(7)
    state = State()
    system = "You are terse."
    for step in range(300):
        role = rng.choice(["user", "assistant", "tool"])
        message: dict[str, object] = {"role": role, "content": "x" * rng.randrange(0, 400)}
        if role == "assistant" and rng.random() < 0.5:
            message["tool_calls"] = [{"id": f"c{step}", "name": "f", "arguments": {"n": step}}]
        state.messages.append(message)
        if step % 97 == 96:  # compaction: a summary replaces the older messages
            state.summary = "summary " * rng.randrange(1, 20)
            state.compacted_until = len(state.messages) - 5
            state.notes.append(f"note {step}")
        assert context_tokens(system, state) == estimate_tokens(system, model_view(state)), step


def test_a_forced_tool_choice_holds_until_the_turns_first_tool_result() -> None:
    from everruns.core.context import tool_called_this_turn

    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "t"}]}
    result = {"role": "tool", "tool_call_id": "c", "content": "ok"}
    assert not tool_called_this_turn([{"role": "user", "content": "q"}])
    assert not tool_called_this_turn([{"role": "user", "content": "q"}, call])
    assert tool_called_this_turn([{"role": "user", "content": "q"}, call, result])
    # A new user message starts a new turn: forced again.
    assert not tool_called_this_turn(
        [{"role": "user", "content": "q"}, call, result, {"role": "user", "content": "again"}]
    )
