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
TOOL_WAITING = "tool.waiting"  # a durable sleep, or a wait for child runs, inside a tool call
COMPACTION_STARTED = "compaction.started"
CONTEXT_COMPACTED = "context.compacted"
CHILD_FINISHED = "child.finished"
TOOLS_LISTED = "tools.listed"  # an MCP server's tool list, journaled once per run
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
    wait_for: list[str] | None = None  # child runs the call waits for
    wait_mode: str = "all"
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
    # Context compaction: messages[:compacted_until] are replaced by `summary` for the model.
    summary: str | None = None
    compacted_until: int = 0
    context_overflow: bool = False  # the provider said the context is too long
    overflow_retried: bool = False
    overflow_error: str = ""
    children: list[str] = field(default_factory=list)
    children_done: dict[str, dict[str, Any]] = field(default_factory=dict)
    children_tokens: int = 0
    children_cost: float = 0.0
    depth: int = 0
    cached_input_tokens: int = 0  # of input_tokens, how many were read from a prompt cache
    truncated: bool = False  # the latest answer was cut off at max_tokens
    continuations: int = 0  # continuations asked for the latest truncated answer
    tool_listings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

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
        state.cached_input_tokens += int(usage.get("cached_input_tokens", 0))


def _join_continuation(state: State, message: dict[str, Any]) -> bool:
    """Append a continuation's text to the truncated answer it continues (a new dict:
    folded messages are never mutated). False when there is nothing to join."""
    last = state.messages[-1] if state.messages else None
    if not state.truncated or last is None or last["role"] != "assistant":
        return False
    joined = {**last, "content": (last.get("content") or "") + (message.get("content") or "")}
    if message.get("tool_calls"):
        joined["tool_calls"] = [*(last.get("tool_calls") or []), *message["tool_calls"]]
    state.messages[-1] = joined
    return True


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
        state.depth = int(data.get("depth", 0))
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
        if data.get("continuation") and _join_continuation(state, message):
            message = state.messages[-1]
            state.continuations += 1
        else:
            state.messages.append(message)
            state.continuations = 0
        state.truncated = bool(data.get("truncated"))
        _add_usage(state, data.get("usage"))
        state.steps += 1
        state.overflow_retried = False
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
        if data.get("class") == "context_too_long" and not state.overflow_retried:
            state.context_overflow = True  # compact, then retry once
            state.overflow_error = str(data.get("error", ""))
        elif not data.get("retryable", True):
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
            call.wait_for = data.get("wait_for")
            call.wait_mode = data.get("mode", "all")
    elif kind == CONTEXT_COMPACTED:
        state.summary = data["summary"]
        state.compacted_until = int(data["until"])
        _add_usage(state, data.get("usage"))
        if state.context_overflow:
            state.context_overflow = False
            state.overflow_retried = True
            state.failures = 0
            state.retry_at = None
    elif kind == TOOLS_LISTED:
        state.tool_listings[data["server"]] = data["tools"]
    elif kind == CHILD_FINISHED:
        state.children_done[data["run_id"]] = data
        usage = data.get("usage") or {}
        state.children_tokens += int(usage.get("total_tokens", 0))
        state.children_cost += float(usage.get("cost_usd", 0.0))
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
    """Workspace writes, notes and spawned children take effect when the tool call's
    result is journaled."""
    if data.get("child") and data["child"] not in state.children:
        state.children.append(data["child"])
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


MAX_CONTINUATIONS = 8
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


def transcript(state: State) -> list[dict[str, Any]]:
    """The conversation as the model sees it. Messages are never mutated after
    they are folded in, so a shallow copy is safe and keeps long runs linear."""
    return list(state.messages)


# ---------------------------------------------------------------- decide


@dataclass(frozen=True)
class Reason:
    attempt: int
    continuation: bool = False  # ask the model to continue its truncated answer


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
class Compact:
    until: int  # summarize messages[:until]
    reason: str


@dataclass(frozen=True)
class Idle:
    """Nothing to do: terminal, or waiting for a signal."""


Atom = Reason | Act | Compact | Complete | Fail | Wait | Idle


def _limit_breach(state: State, spec: AgentSpec, now: float) -> Fail | None:
    limits = spec.limits
    if limits.deadline is not None and now - state.created_ts >= limits.deadline:
        return Fail("deadline_exceeded", f"deadline of {limits.deadline:g}s reached")
    if limits.max_steps is not None and state.steps >= limits.max_steps:
        return Fail("max_steps_exceeded", f"max_steps={limits.max_steps} reached")
    if limits.max_llm_calls is not None and state.llm_calls >= limits.max_llm_calls:
        return Fail("budget_exceeded", f"max_llm_calls={limits.max_llm_calls} reached")
    total = state.input_tokens + state.output_tokens + state.children_tokens
    cost = state.cost_usd + state.children_cost
    if limits.max_tokens is not None and total >= limits.max_tokens:
        return Fail("budget_exceeded", f"max_tokens={limits.max_tokens} reached ({total} used)")
    if limits.max_cost_usd is not None and cost >= limits.max_cost_usd:
        return Fail(
            "budget_exceeded",
            f"max_cost_usd={limits.max_cost_usd:g} reached (${cost:.4f} spent)",
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
        if call.wait_for is not None:
            done = [r for r in call.wait_for if r in state.children_done]
            ready = len(done) == len(call.wait_for) if call.wait_mode == "all" else bool(done)
            if ready:
                plans.append(CallPlan(call, call.attempt, "wake"))
            continue  # parked until a child.finished signal
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
    continuation = False
    if last["role"] == "assistant":
        policy = spec.model.on_truncated
        if not state.truncated or policy == "accept":
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
    breach = _limit_breach(state, spec, now)
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
    if estimate_tokens(spec.system_prompt, model_view(state)) <= policy.max_tokens:
        return None
    cut = compaction_cut(state, policy.keep_recent)
    if cut is None:
        return None  # the recent messages alone are over budget; let the provider decide
    return Compact(until=cut, reason="max_tokens")
