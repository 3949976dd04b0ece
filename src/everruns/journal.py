"""The pure core: journal events, the fold that turns them into state, and decide.

Nothing here does I/O. A run's state is `fold(events)`; the next unit of work
is `decide(state, spec, now)`. Resuming after a crash is the same code path as
normal progress: load the journal, fold, decide, continue.

Messages are stored once: `message.user`, `llm.completed` and `tool.*` events
carry one message each, and the fold assembles the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from everruns.spec import AgentSpec

# Durable event types (journaled, with seq).
RUN_CREATED = "run.created"
RUN_STARTED = "run.started"
RUN_WAITING = "run.waiting"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
RUN_PAUSED = "run.paused"
RUN_RESUMED = "run.resumed"
RUN_FORKED = "run.forked"
MESSAGE_USER = "message.user"
LLM_STARTED = "llm.started"
LLM_COMPLETED = "llm.completed"
LLM_FAILED = "llm.failed"
LLM_FALLBACK = "llm.fallback"
TOOL_STARTED = "tool.started"
TOOL_COMPLETED = "tool.completed"
TOOL_FAILED = "tool.failed"
TOOL_WAITING = "tool.waiting"  # a durable sleep inside a tool call
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_DENIED = "approval.denied"

TERMINAL_EVENTS = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
INTERRUPTED_MESSAGE = (
    "interrupted: the worker executing this tool call stopped before it reported a result; "
    "the tool is at_most_once, so it was not run again and its outcome is unknown"
)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    ts: float
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "ts": self.ts, "data": self.data}


@dataclass
class CallState:
    """One tool call requested by the model, and how far it got."""

    id: str
    name: str
    arguments: dict[str, Any]
    status: str = "pending"  # pending | started | done
    attempt: int = 0
    effect: str | None = None
    result: dict[str, Any] | None = None
    wake_at: float | None = None  # set while the call sleeps durably
    approval: str | None = None  # None | requested | granted | denied
    denial: str | None = None


@dataclass
class State:
    status: str = "queued"
    input: str | None = None
    created_ts: float = 0.0
    messages: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallState] = field(default_factory=list)
    llm_in_flight: bool = False
    model: str | None = None  # label of the model of the latest LLM call
    steps: int = 0
    llm_calls: int = 0
    attempt: int = 0  # attempts of the current reason step
    failures: int = 0  # consecutive failed attempts of the current step
    retry_at: float | None = None
    fatal_error: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    epoch: int = 0
    starts: int = 0
    wake_at: float | None = None
    result: str | None = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # workspace path -> blob sha256

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "llm_calls": self.llm_calls,
        }

    @property
    def busy(self) -> bool:
        """True while an atom is half-way: an LLM call or unresolved tool calls."""
        return self.llm_in_flight or any(c.status != "done" for c in self.calls)


def _flush_inbox(state: State) -> None:
    if not state.busy and state.inbox:
        state.messages.extend(state.inbox)
        state.inbox = []


def _add_usage(state: State, usage: dict[str, Any] | None) -> None:
    if usage:
        state.input_tokens += int(usage.get("input_tokens", 0))
        state.output_tokens += int(usage.get("output_tokens", 0))
        state.cost_usd += float(usage.get("cost_usd", 0.0))


def _call(state: State, call_id: str) -> CallState | None:
    return next((c for c in state.calls if c.id == call_id), None)


def _finish_call(state: State, call_id: str, message: dict[str, Any]) -> None:
    call = _call(state, call_id)
    if call is None:
        return
    call.status = "done"
    call.result = message
    if all(c.status == "done" for c in state.calls):
        # Results enter the conversation in call order, so the transcript does
        # not depend on which parallel call finished first.
        state.messages.extend(c.result for c in state.calls if c.result is not None)
        state.calls = []


def apply(state: State, event: Event) -> State:
    """Fold one event into the state (mutates and returns it)."""
    data = event.data
    kind = event.type
    state.last_seq = event.seq
    if kind == RUN_CREATED:
        state.status = "queued"
        state.input = data.get("input")
        state.created_ts = event.ts
        if data.get("input") is not None:
            state.inbox.append({"role": "user", "content": data["input"]})
    elif kind == RUN_STARTED:
        state.status = "running"
        state.epoch = int(data.get("epoch", state.epoch))
        state.starts += 1
        state.wake_at = None
        # A new lease holder means any call in flight died with the old one.
        state.llm_in_flight = False
    elif kind == MESSAGE_USER:
        state.inbox.append({"role": "user", "content": data["content"]})
        if state.status in ("completed", "failed"):
            state.status = "queued"
            state.result = None
            state.error = None
            state.fatal_error = None
    elif kind == LLM_STARTED:
        state.llm_in_flight = True
        state.model = data.get("model", state.model)
        state.llm_calls += 1
        state.attempt = int(data.get("attempt", state.attempt + 1))
    elif kind == LLM_COMPLETED:
        state.llm_in_flight = False
        message = data["message"]
        state.messages.append(message)
        _add_usage(state, data.get("usage"))
        state.steps += 1
        state.attempt = 0
        state.failures = 0
        state.retry_at = None
        state.calls = [
            CallState(id=tc["id"], name=tc["name"], arguments=tc.get("arguments") or {})
            for tc in message.get("tool_calls") or []
        ]
    elif kind == LLM_FAILED:
        state.llm_in_flight = False
        _add_usage(state, data.get("usage"))
        state.failures += 1
        state.retry_at = data.get("retry_at")
        if not data.get("retryable", True):
            state.fatal_error = data
    elif kind == TOOL_STARTED:
        call = _call(state, data["call_id"])
        if call is not None:
            call.status = "started"
            call.attempt = int(data.get("attempt", call.attempt + 1))
            call.effect = data.get("effect")
    elif kind == TOOL_COMPLETED:
        _apply_effects(state, data)
        _finish_call(
            state,
            data["call_id"],
            {
                "role": "tool",
                "tool_call_id": data["call_id"],
                "name": data.get("name"),
                "content": model_output(data.get("output", ""), data.get("max_output")),
                "is_error": False,
            },
        )
    elif kind == TOOL_WAITING:
        call = _call(state, data["call_id"])
        if call is not None:
            call.wake_at = data.get("wake_at")
    elif kind in (APPROVAL_REQUESTED, APPROVAL_GRANTED, APPROVAL_DENIED):
        call = _call(state, data["call_id"])
        if call is not None and call.approval in (None, "requested"):
            call.approval = kind.split(".")[1]
            call.denial = data.get("reason") if kind == APPROVAL_DENIED else None
    elif kind == TOOL_FAILED:
        _apply_effects(state, data)
        _finish_call(
            state,
            data["call_id"],
            {
                "role": "tool",
                "tool_call_id": data["call_id"],
                "name": data.get("name"),
                "content": data.get("error", "tool failed"),
                "is_error": True,
            },
        )
    elif kind == RUN_WAITING:
        state.status = "waiting"
        state.wake_at = data.get("wake_at")
    elif kind == RUN_PAUSED:
        state.status = "paused"
    elif kind == RUN_RESUMED:
        state.status = "queued"
    elif kind == RUN_FORKED:
        state.status = "queued" if not state.terminal else state.status
    elif kind == RUN_COMPLETED:
        state.status = "completed"
        state.result = data.get("result")
    elif kind == RUN_FAILED:
        state.status = "failed"
        state.error = data
    elif kind == RUN_CANCELLED:
        state.status = "cancelled"
        state.error = data
    _flush_inbox(state)
    return state


def _apply_effects(state: State, data: dict[str, Any]) -> None:
    """Workspace writes and notes take effect when the tool call's result is journaled."""
    for path, sha in (data.get("files") or {}).items():
        if sha is None:
            state.files.pop(path, None)
        else:
            state.files[path] = sha
    if data.get("note"):
        state.notes.append(data["note"])


TRUNCATION_MARKER = (
    "\n[… output truncated: {shown} of {total} characters shown; the full output is in the journal]"
)


def model_output(output: str, limit: int | None) -> str:
    """What the model sees of a tool's output: the head, with a marker when cut."""
    if limit is None or len(output) <= limit:
        return output
    return output[:limit] + TRUNCATION_MARKER.format(shown=limit, total=len(output))


def fold(events: list[Event], state: State | None = None) -> State:
    state = state if state is not None else State()
    for event in events:
        apply(state, event)
    return state


def transcript(state: State) -> list[dict[str, Any]]:
    """The conversation as the model sees it. Messages are never mutated after
    they are folded in, so a shallow copy is safe and keeps long runs linear."""
    return list(state.messages)


# ---------------------------------------------------------------- decide


@dataclass(frozen=True)
class Reason:
    attempt: int


@dataclass(frozen=True)
class CallPlan:
    call: CallState
    attempt: int
    # run | interrupt (at_most_once found started-but-unfinished) | request_approval
    # | deny | wake (a durable sleep is over)
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


@dataclass(frozen=True)
class Wait:
    until: float
    reason: str


@dataclass(frozen=True)
class Idle:
    """Nothing to do: terminal, or waiting for a signal."""


Atom = Reason | Act | Complete | Fail | Wait | Idle


def _limit_breach(state: State, spec: AgentSpec, now: float) -> Fail | None:
    limits = spec.limits
    if limits.deadline is not None and now - state.created_ts >= limits.deadline:
        return Fail("deadline_exceeded", f"deadline of {limits.deadline:g}s reached")
    if limits.max_steps is not None and state.steps >= limits.max_steps:
        return Fail("max_steps_exceeded", f"max_steps={limits.max_steps} reached")
    if limits.max_llm_calls is not None and state.llm_calls >= limits.max_llm_calls:
        return Fail("budget_exceeded", f"max_llm_calls={limits.max_llm_calls} reached")
    total = state.input_tokens + state.output_tokens
    if limits.max_tokens is not None and total >= limits.max_tokens:
        return Fail("budget_exceeded", f"max_tokens={limits.max_tokens} reached ({total} used)")
    if limits.max_cost_usd is not None and state.cost_usd >= limits.max_cost_usd:
        return Fail(
            "budget_exceeded",
            f"max_cost_usd={limits.max_cost_usd:g} reached (${state.cost_usd:.4f} spent)",
        )
    return None


def _plan_calls(
    state: State, effects: dict[str, str], needs_approval: set[str], now: float
) -> Atom:
    """Plan the unresolved calls of the last answer; Wait/Idle when all are parked."""
    plans = []
    wakes = []
    for call in state.calls:
        if call.status == "done":
            continue
        if call.wake_at is not None:
            if now < call.wake_at:
                wakes.append(call.wake_at)
            else:
                plans.append(CallPlan(call, call.attempt, "wake"))
            continue
        if call.approval == "denied":
            plans.append(CallPlan(call, call.attempt, "deny"))
            continue
        if call.name in needs_approval and call.approval != "granted":
            if call.approval is None:
                plans.append(CallPlan(call, call.attempt, "request_approval"))
            continue  # requested: parked until someone decides
        effect = call.effect or effects.get(call.name, "at_most_once")
        action = "interrupt" if call.status == "started" and effect == "at_most_once" else "run"
        plans.append(CallPlan(call, call.attempt + 1, action))
    if plans:
        return Act(plans)
    if wakes:
        return Wait(until=min(wakes), reason="sleep")
    return Idle()


def decide(
    state: State, spec: AgentSpec, now: float, effects: dict[str, str] | None = None
) -> Atom:
    """What to do next. `effects` maps tool name to its declared effect class."""
    if state.terminal:
        return Idle()
    if state.calls:
        return _plan_calls(state, effects or {}, set(spec.approvals.require_for), now)
    last = state.messages[-1] if state.messages else None
    if last is None:
        return Idle()
    if last["role"] == "assistant":
        return Complete(result=last.get("content") or "")
    # The model owes an answer (to a user message or tool results).
    if state.fatal_error is not None:
        # A prompt over the context window has its own documented reason (providers/errors.py).
        reason = (
            "context_too_long"
            if state.fatal_error.get("class") == "context_too_long"
            else "llm_error"
        )
        return Fail(reason, state.fatal_error.get("error", "the LLM call failed"))
    if state.failures >= spec.retry.max_attempts:
        return Fail(
            "llm_error",
            f"LLM call failed {state.failures} times in a row; giving up "
            f"(retry.max_attempts={spec.retry.max_attempts})",
        )
    breach = _limit_breach(state, spec, now)
    if breach is not None:
        return breach
    if state.retry_at is not None and now < state.retry_at:
        return Wait(until=state.retry_at, reason="llm_backoff")
    return Reason(attempt=state.attempt + 1)
