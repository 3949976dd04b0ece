"""decide: the next unit of work (an atom) for a folded state, with the time passed in."""

from __future__ import annotations

from dataclasses import dataclass

from everruns.core.budget import Ledger, breach, effective_limits
from everruns.core.context import compaction_cut, context_tokens
from everruns.core.events import CallStatus
from everruns.core.state import CallState, State
from everruns.spec import AgentSpec


@dataclass(frozen=True)
class Reason:
    attempt: int
    continuation: bool = False  # ask the model to continue its truncated answer


MAX_CONTINUATIONS = 8


@dataclass(frozen=True)
class CallPlan:
    call: CallState
    attempt: int
    # run | interrupt (at_most_once found started-but-unfinished) | request_approval
    # | deny | wake (a durable sleep is over) | skip (not started; a steer came first)
    action: str = "run"

    @property
    def interrupted(self) -> bool:
        return self.action == "interrupt"


@dataclass(frozen=True)
class Act:
    plans: list[CallPlan]


@dataclass(frozen=True)
class Complete:
    result: str


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str
    limit_run: str | None = None  # budget_exceeded on a tree limit: the run whose limit applied


@dataclass(frozen=True)
class Wait:
    until: float
    reason: str


@dataclass(frozen=True)
class Compact:
    until: int  # summarize messages[:until]
    reason: str


@dataclass(frozen=True)
class Grade:
    """Ask the grader of `outcome:` about the last answer (core/outcome.py)."""

    iteration: int


@dataclass(frozen=True)
class Idle:
    """Nothing to do: terminal, or waiting for a signal."""


Atom = Reason | Act | Compact | Complete | Fail | Wait | Idle | Grade


def limit_breach(state: State, spec: AgentSpec, now: float) -> Fail | None:
    """The run's own limits (the spec's, overridden by `limits.changed`) against its
    journal: its own usage and its finished children's. The engine checks the whole
    live tree, ancestors included, before each call (engine/budgets.py); framework runs
    check it before each model request (engine/framework.py)."""
    limits = effective_limits(spec.limits, state.limits)
    if limits.deadline is not None and now - state.created_ts >= limits.deadline:
        return Fail("deadline_exceeded", f"deadline of {limits.deadline:g}s reached")
    if limits.max_steps is not None and state.steps >= limits.max_steps:
        return Fail("max_steps_exceeded", f"max_steps={limits.max_steps} reached")
    if limits.max_llm_calls is not None and state.llm_calls >= limits.max_llm_calls:
        return Fail("budget_exceeded", f"max_llm_calls={limits.max_llm_calls} reached")
    spent = Ledger(state.input_tokens, state.output_tokens, state.cost_usd) + Ledger(
        output_tokens=state.children_tokens, cost_usd=state.children_cost
    )
    reached = breach(limits, spent)
    return Fail("budget_exceeded", reached) if reached else None


def _plan_calls(
    state: State, effects: dict[str, str], needs_approval: set[str], now: float
) -> Atom:
    """Plan the unresolved calls of the last answer; Wait/Idle when all are parked."""
    plans = []
    wakes = []
    for call in state.calls:
        if call.status == CallStatus.DONE:
            continue
        if call.wait_for is not None:
            done = [r for r in call.wait_for if r in state.children_done]
            ready = len(done) == len(call.wait_for) if call.wait_mode == "all" else bool(done)
            if ready:
                plans.append(CallPlan(call, call.attempt, "wake"))
            continue  # parked until a child.finished signal
        if call.retry_at is not None and now < call.retry_at:
            wakes.append(call.retry_at)  # a retry not due yet (tool.retrying)
            continue
        if call.wake_at is not None:
            if now < call.wake_at:
                wakes.append(call.wake_at)
            else:
                plans.append(CallPlan(call, call.attempt, "wake"))
            continue
        if state.steer_pending and call.status == CallStatus.PENDING:
            plans.append(CallPlan(call, call.attempt, "skip"))  # the steer redirects the turn
            continue
        if call.approval == "denied":
            plans.append(CallPlan(call, call.attempt, "deny"))
            continue
        if call.name in needs_approval and call.approval != "granted":
            if call.approval is None:
                plans.append(CallPlan(call, call.attempt, "request_approval"))
            continue  # requested: parked until someone decides
        effect = call.effect or effects.get(call.name, "at_most_once")
        action = (
            "interrupt" if call.status == CallStatus.STARTED and effect == "at_most_once" else "run"
        )
        plans.append(CallPlan(call, call.attempt + 1, action))
    if plans:
        return Act(plans)
    if wakes:
        retrying = any(c.retry_at == min(wakes) for c in state.calls)
        return Wait(until=min(wakes), reason="tool_retry" if retrying else "sleep")
    return Idle()


def decide(
    state: State, spec: AgentSpec, now: float, effects: dict[str, str] | None = None
) -> Atom:
    """What to do next. `effects` maps tool name to its declared effect class."""
    if state.terminal or state.interrupted:
        return Idle()  # an interrupted run waits for the next user message
    if state.calls:
        return _plan_calls(state, effects or {}, set(spec.approvals.require_for), now)
    last = state.messages[-1] if state.messages else None
    if last is None:
        return Idle()
    continuation = False
    if last["role"] == "assistant":
        if state.script_exhausted and state.prior_result is not None:
            return Complete(result=state.prior_result)
        policy = spec.model.on_truncated
        if not state.truncated or policy == "accept":
            if spec.outcome is not None and state.graded_at != len(state.messages):
                return Grade(iteration=state.iteration + 1)
            return Complete(result=last.get("content") or "")
        if policy == "fail":
            return Fail(
                "truncated",
                "the answer was cut off at the model's max_tokens (model.on_truncated: fail)",
            )
        if state.continuations >= MAX_CONTINUATIONS:
            return Fail(
                "truncated",
                f"the answer was still cut off after {MAX_CONTINUATIONS} continuations",
            )
        continuation = True
    # The model owes an answer (to a user message or tool results, or the rest of one).
    if state.fatal_error is not None:
        # A prompt over the context window and a request the SDK would not build have
        # their own documented reasons (providers/errors.py).
        error_class = state.fatal_error.get("class")
        reason = (
            error_class if error_class in ("context_too_long", "invalid_request") else "llm_error"
        )
        return Fail(reason, state.fatal_error.get("error", "the LLM call failed"))
    if state.failures >= spec.retry.max_attempts:
        return Fail(
            "llm_error",
            f"LLM call failed {state.failures} times in a row; giving up "
            f"(retry.max_attempts={spec.retry.max_attempts})",
        )
    breach = limit_breach(state, spec, now)
    if breach is not None:
        return breach
    compact = _need_compaction(state, spec)
    if compact is not None:
        return compact
    if state.retry_at is not None and now < state.retry_at:
        return Wait(until=state.retry_at, reason="llm_backoff")
    return Reason(attempt=state.attempt + 1, continuation=continuation)


def _need_compaction(state: State, spec: AgentSpec) -> Atom | None:
    policy = spec.context
    if state.context_overflow:
        cut = compaction_cut(state, min(policy.keep_recent, max(1, len(state.messages) // 2)))
        if cut is None:
            return Fail(
                "context_too_long", "the context is too long and nothing is left to compact"
            )
        return Compact(until=cut, reason="provider_context_too_long")
    if policy.max_tokens is None:
        return None
    if context_tokens(spec.system_prompt, state) <= policy.max_tokens:
        return None
    cut = compaction_cut(state, policy.keep_recent)
    if cut is None:
        return None  # the recent messages alone are over budget; let the provider decide
    return Compact(until=cut, reason="max_tokens")
