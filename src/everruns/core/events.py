"""The journal's vocabulary: event types, run statuses, and the payload of each event.

The enum values are the strings stored in the journal and the runs table, so a
`StrEnum` member and the stored string compare equal and the format on disk is
unchanged. The payload TypedDicts document which fields each event carries; the
journal stores them as JSON, so they are descriptions for readers and type checkers,
not validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict


class EventType(StrEnum):
    """Durable event types (journaled, with a gap-free seq)."""

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
    TOOL_WAITING = "tool.waiting"  # a durable sleep, or a wait for child runs, inside a call
    COMPACTION_STARTED = "compaction.started"
    CONTEXT_COMPACTED = "context.compacted"
    CHILD_FINISHED = "child.finished"
    TOOLS_LISTED = "tools.listed"  # an MCP server's tool list, journaled once per run
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_DENIED = "approval.denied"
    # run API verbs (issue 19): interrupt, and the grader of `outcome:`
    RUN_INTERRUPTED = "run.interrupted"  # the in-flight atom was cut; waits for a message
    OUTCOME_GRADING = "outcome.grading"  # the grader call started (an atom, like llm.started)
    OUTCOME_GRADED = "outcome.graded"  # its verdict, feedback and usage
    # tool retries and progress (issue 12)
    TOOL_RETRYING = "tool.retrying"  # an attempt did not take effect; the call runs again later
    # budgets (issue 11)
    LLM_CHARGED = "llm.charged"  # the charge of an attempt that ended with no answer of its own
    LIMITS_CHANGED = "limits.changed"  # a run's limits raised (or lowered) from outside


class RunStatus(StrEnum):
    """A run's status, as folded from its journal and projected into the runs table."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CallStatus(StrEnum):
    """How far one tool call of the model's latest answer got."""

    PENDING = "pending"
    STARTED = "started"
    DONE = "done"


# Module-level names, as the journal has always exported them.
RUN_CREATED = EventType.RUN_CREATED
RUN_STARTED = EventType.RUN_STARTED
RUN_WAITING = EventType.RUN_WAITING
RUN_COMPLETED = EventType.RUN_COMPLETED
RUN_FAILED = EventType.RUN_FAILED
RUN_CANCELLED = EventType.RUN_CANCELLED
RUN_PAUSED = EventType.RUN_PAUSED
RUN_RESUMED = EventType.RUN_RESUMED
RUN_FORKED = EventType.RUN_FORKED
MESSAGE_USER = EventType.MESSAGE_USER
LLM_STARTED = EventType.LLM_STARTED
LLM_COMPLETED = EventType.LLM_COMPLETED
LLM_FAILED = EventType.LLM_FAILED
LLM_FALLBACK = EventType.LLM_FALLBACK
TOOL_STARTED = EventType.TOOL_STARTED
TOOL_COMPLETED = EventType.TOOL_COMPLETED
TOOL_FAILED = EventType.TOOL_FAILED
TOOL_WAITING = EventType.TOOL_WAITING
COMPACTION_STARTED = EventType.COMPACTION_STARTED
CONTEXT_COMPACTED = EventType.CONTEXT_COMPACTED
CHILD_FINISHED = EventType.CHILD_FINISHED
TOOLS_LISTED = EventType.TOOLS_LISTED
APPROVAL_REQUESTED = EventType.APPROVAL_REQUESTED
APPROVAL_GRANTED = EventType.APPROVAL_GRANTED
APPROVAL_DENIED = EventType.APPROVAL_DENIED
RUN_INTERRUPTED = EventType.RUN_INTERRUPTED
OUTCOME_GRADING = EventType.OUTCOME_GRADING
OUTCOME_GRADED = EventType.OUTCOME_GRADED
TOOL_RETRYING = EventType.TOOL_RETRYING
# budgets (issue 11)
LLM_CHARGED = EventType.LLM_CHARGED
LIMITS_CHANGED = EventType.LIMITS_CHANGED

TERMINAL_EVENTS = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})
TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
# Statuses a worker may claim (when `wake_at` is due and no live lease is held).
ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
# Events that start work rather than finish it: a worker that dies after only these
# made no progress (crash-loop protection).
NOT_PROGRESS = frozenset(
    {
        RUN_STARTED,
        LLM_STARTED,
        TOOL_STARTED,
        COMPACTION_STARTED,
        TOOLS_LISTED,
        LLM_FALLBACK,
        APPROVAL_REQUESTED,
        OUTCOME_GRADING,
        LLM_CHARGED,
    }
)
# Events journaled from outside the lease holder (`Store.signal`): they wake a parked run.
SIGNALS = frozenset(
    {MESSAGE_USER, APPROVAL_GRANTED, APPROVAL_DENIED, CHILD_FINISHED, LIMITS_CHANGED}
)

USER_INTERRUPTED_MESSAGE = (
    "interrupted by the user: this tool call was stopped before it reported a result; "
    "the tool is at_most_once, so its outcome is unknown"
)
USER_CANCELLED_MESSAGE = "interrupted by the user: the call was cancelled before it finished"
SKIPPED_MESSAGE = "not run: the user redirected the run before this call started"

INTERRUPTED_MESSAGE = (
    "interrupted: the worker executing this tool call stopped before it reported a result; "
    "the tool is at_most_once, so it was not run again and its outcome is unknown"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled event. `type` is an `EventType` value (a plain str when loaded)."""

    seq: int
    type: str
    ts: float
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": str(self.type), "ts": self.ts, "data": self.data}


# ------------------------------------------------------------------ payloads


class Usage(TypedDict, total=False):
    """Token usage and cost of one LLM call, as journaled."""

    input_tokens: int  # including cached_input_tokens
    output_tokens: int
    cost_usd: float
    cached_input_tokens: int  # read from the provider's prompt cache (cheaper)
    # prompt caching: written to the cache (Anthropic; dearer than input): 5-minute, 1-hour
    cache_write_input_tokens: int
    cache_write_1h_input_tokens: int
    estimated: bool  # the server reported no usage: estimated from the text
    cost_known: bool  # False: the model has no price, so cost_usd (0) is not its cost


class AgentRef(TypedDict):
    name: str
    version: int


class RunCreated(TypedDict):
    """The first event of every run (seq 1), written with its runs row."""

    input: str | None
    agent: AgentRef
    parent_id: NotRequired[str]  # set for sub-agent runs
    depth: NotRequired[int]  # sub-agent nesting depth (0 for top-level runs)
    schedule: NotRequired[dict[str, Any]]  # the tick, for runs fired by a schedule


class RunStarted(TypedDict):
    """A worker took the lease (fresh start, resume, or takeover after a crash)."""

    worker: str
    epoch: int
    takeover: bool  # the previous holder died
    resumed: bool  # the run had been started before
    crashes: int  # consecutive holders that died without progress


class RunWaiting(TypedDict):
    """The run parks: until `wake_at` (a durable wait) or for approvals of `calls`."""

    reason: str  # llm_backoff | rate_limited | circuit_breakers_open | sleep | approval
    wake_at: NotRequired[float]
    calls: NotRequired[list[str]]


class RunCompleted(TypedDict):
    result: str


class RunFailed(TypedDict):
    """`reason` is a stable code (max_steps_exceeded, llm_error, crash_loop, ...)."""

    error: str
    reason: str
    limit_run: NotRequired[
        str
    ]  # budget_exceeded: the run (self or an ancestor) whose limit applied


class RunCancelled(TypedDict):
    reason: str  # who or what cancelled it, in words


class RunPaused(TypedDict):
    by: str


class RunResumed(TypedDict):
    by: str


class RunForked(TypedDict):
    """The first event after the copied prefix of a forked run."""

    from_run: str
    at_seq: int
    agent_version: int


class MessageUser(TypedDict):
    content: str
    # A steer (POST /v1/runs/{id}/steer): injected at the next step boundary of the current
    # turn; tool calls the model planned but did not start are skipped for it.
    steer: NotRequired[bool]


class LLMStarted(TypedDict):
    attempt: int
    step: int
    model: str  # the model's label


class LLMCompleted(TypedDict):
    """The model's answer; its `tool_calls` (each with `id`) become the pending calls."""

    attempt: int
    message: dict[str, Any]
    usage: Usage
    model: str
    stop_reason: str | None
    truncated: NotRequired[bool]  # cut off at max_tokens
    continuation: NotRequired[bool]  # continues the truncated answer before it


# `class` and `from` are keywords, hence the functional syntax.
LLMFailed = TypedDict(
    "LLMFailed",
    {
        "attempt": int,
        "model": str,
        "error": str,
        "class": str,  # the error class (providers/errors.py)
        "retryable": bool,
        "retry_at": float | None,
        "retry_after": float | None,
        "status": int | None,
        "usage": Usage,
        "breaker_open_until": NotRequired[float],
    },
)

LLMFallback = TypedDict(
    "LLMFallback",
    {
        "from": str,
        "to": str,
        "reason": Literal["breaker_open", "recovered"],
        "skipped": list[str],
    },
)


class ToolStarted(TypedDict):
    """`call_id` is the model's tool call id (`ToolContext.tool_call_id` in a tool)."""

    call_id: str
    name: str
    attempt: int
    effect: str  # pure | idempotent | at_most_once
    idempotency_key: str


class ToolCompleted(TypedDict):
    """A call's result. Workspace files, a note and a spawned child take effect here."""

    call_id: str
    name: str
    output: str
    max_output: NotRequired[int]  # the model sees only this many characters
    note: NotRequired[str]
    files: NotRequired[dict[str, str | None]]  # path -> blob sha256 (None: deleted)
    child: NotRequired[str]
    progress: NotRequired[dict[str, Any]]  # the latest ctx.progress(): done, total, note


class ToolFailed(TypedDict):
    call_id: str
    name: str
    error: str
    interrupted: NotRequired[bool]  # at_most_once call found in flight after a crash
    skipped: NotRequired[bool]  # not started: a steer or an interrupt came first
    denied: NotRequired[bool]  # a human denied the approval
    files: NotRequired[dict[str, str | None]]


class ToolWaiting(TypedDict):
    """A call parks: a durable sleep until `wake_at`, or a wait for child runs."""

    call_id: str
    name: str
    reason: str
    wake_at: NotRequired[float]
    wait_for: NotRequired[list[str]]
    mode: NotRequired[Literal["all", "any"]]


class CompactionStarted(TypedDict):
    until: int
    reason: str  # max_tokens | provider_context_too_long


class ContextCompacted(TypedDict):
    """messages[:until] are replaced by `summary` for the model (the journal keeps all)."""

    until: int
    summary: str
    usage: Usage
    model: str


class ChildFinished(TypedDict):
    """Journaled into the parent when a sub-agent run ends (in the child's transaction)."""

    run_id: str
    status: str
    result: str | None
    error: Any
    usage: dict[str, Any]


class ToolsListed(TypedDict):
    server: str
    tools: list[dict[str, Any]]


class ApprovalRequested(TypedDict):
    call_id: str
    name: str
    arguments: dict[str, Any]


class ApprovalGranted(TypedDict):
    call_id: str
    reason: NotRequired[str]


class ApprovalDenied(TypedDict):
    call_id: str
    reason: str | None


class RunInterrupted(TypedDict):
    """An interrupt cut the in-flight atom; the run waits for the next user message."""

    by: str
    llm: NotRequired[dict[str, Any]]  # the LLM call that was cut: attempt, model
    tools: NotRequired[list[dict[str, Any]]]  # each call cut: call_id, name, effect, outcome


class OutcomeGrading(TypedDict):
    iteration: int
    model: str


class OutcomeGraded(TypedDict):
    """The grader's verdict on the answer of `iteration`. `verdict` is satisfied,
    not_satisfied (the last iteration failed), or revising (the feedback goes back to the
    agent as a user message)."""

    iteration: int
    passed: bool
    feedback: str
    verdict: str
    usage: Usage
    model: str


# budgets (issue 11)


class LLMCharged(TypedDict):
    """What an attempt that ended without `llm.completed`/`llm.failed` is charged: one
    cancelled by a user's cancel or a shutdown (journaled by its worker), or lost with a
    worker that died or lost its lease (journaled by the worker that takes the run over)."""

    attempt: int
    model: str
    reason: Literal["cancelled", "lost"]
    usage: Usage  # estimated: true (input from the request, output from what was streamed)


class LimitsChanged(TypedDict):
    """A run's limits changed from outside (`everruns budget`). `limits` is every
    override in force afterwards (over the spec's `limits`); `deadline` is in seconds
    from the run's creation, like the spec's."""

    by: str
    old: dict[str, Any]
    new: dict[str, Any]
    limits: dict[str, Any]


class ToolRetrying(TypedDict):
    """A call runs again at `retry_at`: its tool said `RetryLater` (a 429, a 503 ...), it
    failed transiently, or its fleet-wide rate limit is exhausted (`attempt` not used up)."""

    call_id: str
    name: str
    attempt: int  # the attempt that did not take effect (0: none started yet)
    reason: str
    retry_at: float
    error: NotRequired[str]
    progress: NotRequired[dict[str, Any]]  # the latest ctx.progress() of the attempt
    files: NotRequired[dict[str, str | None]]


PAYLOADS: dict[EventType, type] = {
    RUN_CREATED: RunCreated,
    RUN_STARTED: RunStarted,
    RUN_WAITING: RunWaiting,
    RUN_COMPLETED: RunCompleted,
    RUN_FAILED: RunFailed,
    RUN_CANCELLED: RunCancelled,
    RUN_PAUSED: RunPaused,
    RUN_RESUMED: RunResumed,
    RUN_FORKED: RunForked,
    MESSAGE_USER: MessageUser,
    LLM_STARTED: LLMStarted,
    LLM_COMPLETED: LLMCompleted,
    LLM_FAILED: LLMFailed,
    LLM_FALLBACK: LLMFallback,
    TOOL_STARTED: ToolStarted,
    TOOL_COMPLETED: ToolCompleted,
    TOOL_FAILED: ToolFailed,
    TOOL_WAITING: ToolWaiting,
    COMPACTION_STARTED: CompactionStarted,
    CONTEXT_COMPACTED: ContextCompacted,
    CHILD_FINISHED: ChildFinished,
    TOOLS_LISTED: ToolsListed,
    APPROVAL_REQUESTED: ApprovalRequested,
    APPROVAL_GRANTED: ApprovalGranted,
    APPROVAL_DENIED: ApprovalDenied,
    RUN_INTERRUPTED: RunInterrupted,
    OUTCOME_GRADING: OutcomeGrading,
    OUTCOME_GRADED: OutcomeGraded,
    TOOL_RETRYING: ToolRetrying,
    LLM_CHARGED: LLMCharged,
    LIMITS_CHANGED: LimitsChanged,
}
"""The payload type of every event type (a test checks every type has one)."""
