"""What the SDK returns: the API's resources as pydantic models, and its one error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from everruns.errors import EverrunsError

TERMINAL_EVENTS = {"run.completed", "run.failed", "run.cancelled"}
TERMINAL_STATUSES = {"completed", "failed", "cancelled"}


class ApiError(EverrunsError):
    """An RFC 9457 problem returned by the server."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {problem.get('title', '')}: {self.detail}")


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = 0.0  # None when a call had no price
    cost_known: bool = True
    cached_input_tokens: int = 0
    cache_hit_ratio: float | None = None  # cached_input_tokens / input_tokens


class Run(BaseModel):
    id: str
    agent: str
    agent_version: int
    parent_id: str | None = None
    status: str
    steps: int = 0
    usage: Usage = Usage()  # the run's own calls
    tree_usage: Usage = Usage()  # the run and all its descendants (sub-agents)
    limits: dict[str, Any] | None = None  # raised or lowered over the spec's limits
    input: str | None = None
    result: str | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None  # the latest ctx.progress(): done, total, note
    epoch: int = 0
    lease_owner: str | None = None
    wake_at: float | None = None
    last_seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    outcome: str | None = None  # the grader's verdict: satisfied | not_satisfied | revising
    # From a list: input and result cut to their first 200 characters (`runs.get` has them whole).
    truncated: bool = False

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Agent(BaseModel):
    name: str
    version: int
    spec: dict[str, Any] | None = None
    archived: bool = False


class Event(BaseModel):
    run_id: str
    type: str
    data: dict[str, Any] = {}
    seq: int | None = None  # None for ephemeral events (token deltas)
    ts: float | None = None
    ephemeral: bool = False


class Receipt(BaseModel):
    """What a run verb (steer, interrupt, cancel) produced: the seq of its event (None while
    the run's worker has not journaled it yet)."""

    id: str
    outcome: str
    seq: int | None = None


class Webhook(BaseModel):
    id: str
    url: str
    events: list[str]
    secret_ref: str | None = None
    run_id: str | None = None
    created_at: float = 0.0


class Delivery(BaseModel):
    id: str
    webhook: str
    url: str
    run_id: str
    seq: int
    event_type: str
    status: str
    attempts: int = 0
    history: list[dict[str, Any]] = []
    next_attempt_at: float | None = None
    created_at: float = 0.0
    delivered_at: float | None = None


class Schedule(BaseModel):
    """An agent's schedule: `agent_version` is a number (pinned) or "latest"."""

    agent: str
    expression: str
    agent_version: int | str
    overlap: str
    input: str | None = None
    enabled: bool = True
    next_fire_at: float
    last_fired_at: float | None = None
    last_run_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class MemoryItem(BaseModel):
    """One note an agent keeps across runs (its `memory` tool): `key` is the note's id."""

    key: str
    value: str
    updated_at: float
    run_id: str | None = None
