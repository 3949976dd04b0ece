"""The fold: a run's state is `fold(events)`.

Messages are stored once: `message.user`, `llm.completed` and `tool.*` events
carry one message each, and the fold assembles the conversation. Resuming after a
crash is the same code path as normal progress: load the journal, fold, decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from everruns.core.events import (
    APPROVAL_DENIED,
    APPROVAL_GRANTED,
    APPROVAL_REQUESTED,
    CHILD_FINISHED,
    CONTEXT_COMPACTED,
    LIMITS_CHANGED,
    LLM_CHARGED,
    LLM_COMPLETED,
    LLM_FAILED,
    LLM_STARTED,
    MESSAGE_USER,
    OUTCOME_GRADED,
    OUTCOME_GRADING,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_CREATED,
    RUN_FAILED,
    RUN_FORKED,
    RUN_INTERRUPTED,
    RUN_PAUSED,
    RUN_RESUMED,
    RUN_STARTED,
    RUN_WAITING,
    TERMINAL_STATUSES,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_RETRYING,
    TOOL_STARTED,
    TOOL_WAITING,
    TOOLS_LISTED,
    CallStatus,
    Event,
    RunStatus,
)


@dataclass
class CallState:
    """One tool call requested by the model, and how far it got."""

    id: str
    name: str
    arguments: dict[str, Any]
    status: str = CallStatus.PENDING
    attempt: int = 0
    effect: str | None = None
    result: dict[str, Any] | None = None
    wake_at: float | None = None  # set while the call sleeps durably
    wait_for: list[str] | None = None  # child runs the call waits for
    wait_mode: str = "all"
    approval: str | None = None  # None | requested | granted | denied
    denial: str | None = None
    retry_at: float | None = None  # set while the call waits to be retried (tool.retrying)


@dataclass
class State:
    status: str = RunStatus.QUEUED
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
    # The result before a follow-up message reopened the run; it stands when the
    # follow-up's answer is only a `script_exhausted` notice (scripted provider).
    prior_result: str | None = None
    script_exhausted: bool = False
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
    unpriced_calls: int = 0  # own calls of a model without a price (the cost is not known)
    limits: dict[str, Any] = field(default_factory=dict)  # overrides from limits.changed
    depth: int = 0
    cached_input_tokens: int = 0  # of input_tokens, how many were read from a prompt cache
    truncated: bool = False  # the latest answer was cut off at max_tokens
    continuations: int = 0  # continuations asked for the latest truncated answer
    tool_listings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    progress: dict[str, Any] | None = None  # the latest journaled ctx.progress() of a tool
    # Running prefix sums of the messages' sizes (core/context.py): the context estimate
    # costs O(1) per LLM call however long the run. Messages never change once folded.
    char_prefix: list[int] = field(default_factory=lambda: [0], repr=False, compare=False)
    # Steer and interrupt (issue 19): a steer in the inbox skips calls not yet started;
    # after an interrupt the run waits for the next user message.
    steer_pending: bool = False
    interrupted: bool = False
    # Outcomes: the grader's last verdict, how many answers it graded this turn, and the
    # length of `messages` when it graded (the answer then last is graded).
    verdict: str | None = None
    iteration: int = 0
    graded_at: int = -1
    grader_calls: int = 0

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
        return self.llm_in_flight or any(c.status != CallStatus.DONE for c in self.calls)


def _flush_inbox(state: State) -> None:
    if not state.busy and state.inbox:
        state.messages.extend(state.inbox)
        state.inbox = []
        state.steer_pending = False


GRADER_FEEDBACK = (
    "A grader checked your answer against the rubric and found it not yet satisfactory "
    "(iteration {iteration} of {limit}). Feedback:\n{feedback}\n\nRevise your answer."
)


def add_usage(state: State, usage: dict[str, Any] | None) -> None:
    """Add one event's usage to the run's totals."""
    if usage:
        state.input_tokens += int(usage.get("input_tokens", 0))
        state.output_tokens += int(usage.get("output_tokens", 0))
        state.cost_usd += float(usage.get("cost_usd", 0.0))
        state.cached_input_tokens += int(usage.get("cached_input_tokens", 0))
        if usage.get("cost_known") is False:
            state.unpriced_calls += 1


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


def _tool_result(state: State, data: dict[str, Any], content: Any, *, is_error: bool) -> None:
    """A call's outcome (`tool.completed` or `tool.failed`): its effects, then its message."""
    _apply_effects(state, data)
    message = {
        "role": "tool",
        "tool_call_id": data["call_id"],
        "name": data.get("name"),
        "content": content,
        "is_error": is_error,
    }
    _finish_call(state, data["call_id"], message)


def _finish_call(state: State, call_id: str, message: dict[str, Any]) -> None:
    call = _call(state, call_id)
    if call is None:
        return
    call.status = CallStatus.DONE
    call.result = message
    if all(c.status == CallStatus.DONE for c in state.calls):
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
        state.status = RunStatus.QUEUED
        state.input = data.get("input")
        state.created_ts = event.ts
        state.depth = int(data.get("depth", 0))
        if data.get("input") is not None:
            state.inbox.append({"role": "user", "content": data["input"]})
        _apply_effects(state, data)  # files handed in with the run (--file, --dir)
    elif kind == RUN_STARTED:
        state.status = RunStatus.RUNNING
        state.epoch = int(data.get("epoch", state.epoch))
        state.starts += 1
        state.wake_at = None
        # A new lease holder means any call in flight died with the old one.
        state.llm_in_flight = False
    elif kind == MESSAGE_USER:
        state.inbox.append({"role": "user", "content": data["content"]})
        state.steer_pending = state.steer_pending or bool(data.get("steer"))
        state.interrupted = False
        if state.status in (RunStatus.COMPLETED, RunStatus.FAILED):
            state.iteration = 0  # a new turn: its answers are graded afresh
            state.verdict = None
            state.status = RunStatus.QUEUED
            if state.result is not None:
                state.prior_result = state.result
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
        add_usage(state, data.get("usage"))
        state.steps += 1
        state.script_exhausted = data.get("stop_reason") == "script_exhausted"
        state.overflow_retried = False
        state.attempt = 0
        state.failures = 0
        state.retry_at = None
        state.calls = [
            CallState(id=tc["id"], name=tc["name"], arguments=tc.get("arguments") or {})
            for tc in message.get("tool_calls") or []
        ]
    elif kind == LLM_CHARGED:  # an attempt that ended without an answer or a failure
        state.llm_in_flight = False
        add_usage(state, data.get("usage"))
    elif kind == LIMITS_CHANGED:
        state.limits = dict(data.get("limits") or {})
    elif kind == LLM_FAILED:
        state.llm_in_flight = False
        add_usage(state, data.get("usage"))
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
            call.status = CallStatus.STARTED
            call.attempt = int(data.get("attempt", call.attempt + 1))
            call.effect = data.get("effect")
            call.retry_at = None
    elif kind == TOOL_RETRYING:
        _apply_effects(state, data)
        call = _call(state, data["call_id"])
        if call is not None:
            call.status = CallStatus.PENDING  # not done: runs again, whatever its effect
            call.retry_at = data.get("retry_at")
        if data.get("progress"):
            state.progress = data["progress"]
    elif kind == TOOL_COMPLETED:
        if data.get("progress"):
            state.progress = data["progress"]
        output = model_output(data.get("output", ""), data.get("max_output"))
        _tool_result(state, data, output, is_error=False)
    elif kind == TOOL_WAITING:
        call = _call(state, data["call_id"])
        if call is not None:
            call.wake_at = data.get("wake_at")
            call.wait_for = data.get("wait_for")
            call.wait_mode = data.get("mode", "all")
    elif kind == CONTEXT_COMPACTED:
        state.summary = data["summary"]
        state.compacted_until = int(data["until"])
        add_usage(state, data.get("usage"))
        if state.context_overflow:
            state.context_overflow = False
            state.overflow_retried = True
            state.failures = 0
            state.retry_at = None
    elif kind == TOOLS_LISTED:
        state.tool_listings[data["server"]] = data["tools"]
    elif kind == CHILD_FINISHED:
        # A child resumed after a failure finishes again: its latest totals replace
        # the earlier ones (they include them).
        for finished, sign in ((state.children_done.get(data["run_id"]), -1), (data, 1)):
            usage = (finished or {}).get("usage") or {}
            state.children_tokens += sign * int(usage.get("total_tokens", 0))
            state.children_cost += sign * float(usage.get("cost_usd") or 0.0)
        state.children_done[data["run_id"]] = data
    elif kind in (APPROVAL_REQUESTED, APPROVAL_GRANTED, APPROVAL_DENIED):
        call = _call(state, data["call_id"])
        if call is not None and call.approval in (None, "requested"):
            call.approval = kind.split(".")[1]
            call.denial = data.get("reason") if kind == APPROVAL_DENIED else None
    elif kind == TOOL_FAILED:
        _tool_result(state, data, data.get("error", "tool failed"), is_error=True)
    elif kind == RUN_INTERRUPTED:
        state.llm_in_flight = False
        state.interrupted = True
        state.status = RunStatus.WAITING
        state.wake_at = None
    elif kind == OUTCOME_GRADING:
        state.grader_calls += 1
    elif kind == OUTCOME_GRADED:
        _apply_grade(state, data)
    elif kind == RUN_WAITING:
        state.status = RunStatus.WAITING
        state.wake_at = data.get("wake_at")
    elif kind == RUN_PAUSED:
        state.status = RunStatus.PAUSED
    elif kind == RUN_RESUMED:  # after a pause, or a failure on a limit that was raised
        state.status = RunStatus.QUEUED
        state.error = None
    elif kind == RUN_FORKED:
        state.status = RunStatus.QUEUED if not state.terminal else state.status
    elif kind == RUN_COMPLETED:
        state.status = RunStatus.COMPLETED
        state.result = data.get("result")
    elif kind == RUN_FAILED:
        state.status = RunStatus.FAILED
        state.error = data
    elif kind == RUN_CANCELLED:
        state.status = RunStatus.CANCELLED
        state.error = data
    _flush_inbox(state)
    return state


def _apply_grade(state: State, data: dict[str, Any]) -> None:
    """The grader's verdict on the last answer; a failing one sends its feedback back to
    the agent as a user message (stored once, in this event)."""
    add_usage(state, data.get("usage"))
    state.iteration = int(data.get("iteration", state.iteration + 1))
    state.verdict = data.get("verdict")
    state.graded_at = len(state.messages)
    if state.verdict == "revising":
        feedback = GRADER_FEEDBACK.format(
            iteration=state.iteration,
            limit=data.get("max_iterations", "?"),
            feedback=data.get("feedback") or "(none given)",
        )
        state.inbox.append({"role": "user", "content": feedback})


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


def transcript(state: State) -> list[dict[str, Any]]:
    """The conversation as the model sees it. Messages are never mutated after
    they are folded in, so a shallow copy is safe and keeps long runs linear."""
    return list(state.messages)
