"""The grade atom of `outcome:`: one grader call on the agent's final answer.

Journaled as its own atom: `outcome.grading` before the call, `outcome.graded` (verdict,
feedback, usage — charged to the run like any LLM call) after it. A grader call cut by a
crash is made again (same iteration, so a scripted grader gives the same answer). A grader
that fails (an error from its provider) counts as a failing grade whose feedback says so,
so a broken grader never loops: the iterations run out.
"""

from __future__ import annotations

import asyncio

from everruns.core.decide import Grade
from everruns.core.events import EventType
from everruns.core.outcome import grader_messages, parse_grade, verdict
from everruns.engine.keys import stored_key
from everruns.engine.runlog import RunLog
from everruns.providers import LLMRequest, ProviderError, get_provider
from everruns.providers.pricing import cost_usd, price_for
from everruns.settings import Settings
from everruns.spec import AgentSpec
from everruns.store import Store


async def grade(
    log: RunLog, store: Store, settings: Settings, spec: AgentSpec, atom: Grade, origin: str
) -> None:
    outcome = spec.outcome
    assert outcome is not None  # decide asks for a Grade only with `outcome:`
    model = outcome.grader.model
    await log.append(EventType.OUTCOME_GRADING, {"iteration": atom.iteration, "model": model.label})
    state = log.state
    answer = state.messages[-1].get("content") or "" if state.messages else ""
    request = LLMRequest(
        model=model,
        system="You grade an AI agent's answer against a rubric.",
        messages=grader_messages(outcome.rubric, state.input, answer),
        tools=[],
        step=atom.iteration - 1,
        attempt=1,
        purpose="grade",
    )
    usage: dict[str, float | int] = {}
    try:
        provider = get_provider(model, await stored_key(store, settings, origin, model))
        response = await asyncio.wait_for(
            provider.complete(request, lambda _t: None), model.timeouts.total
        )
    except (ProviderError, TimeoutError) as exc:
        passed, feedback = False, f"the grader failed: {getattr(exc, 'message', None) or exc}"
    else:
        price = price_for(model, settings.prices)
        usage = {**response.usage, "cost_usd": cost_usd(response.usage, price)}
        passed, feedback = parse_grade(response.message.get("content") or "")
    await log.append(
        EventType.OUTCOME_GRADED,
        {
            "iteration": atom.iteration,
            "passed": passed,
            "feedback": feedback,
            "verdict": verdict(passed, atom.iteration, outcome.max_iterations),
            "max_iterations": outcome.max_iterations,
            "usage": usage,
            "model": model.label,
        },
    )
