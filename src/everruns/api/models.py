"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from everruns.spec import WebhookSpec


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AgentCreate(_In):
    spec: dict[str, Any] | None = Field(default=None, description="The agent spec as JSON.")
    yaml: str | None = Field(default=None, max_length=1_000_000, description="Or as YAML text.")


class AgentOut(BaseModel):
    name: str
    version: int
    spec: dict[str, Any] | None = None
    archived: bool = False
    created_at: float | None = None


class RunCreate(_In):
    agent: str | None = Field(default=None, description="Name of a stored agent.")
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Its version (default: latest)."
    )
    spec: dict[str, Any] | None = Field(default=None, description="Or an inline agent spec.")
    input: str | None = Field(default=None, max_length=1_000_000)
    webhooks: list[WebhookSpec] = Field(
        default_factory=list, max_length=20, description="Webhooks told about this run."
    )
    files: dict[str, str] | None = Field(
        default=None,
        description="Workspace files of the run before its first step: path -> the sha256 "
        "of a blob uploaded with POST /v1/blobs.",
    )


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(description="null when a call had no price (see cost_known)")
    cost_known: bool = Field(description="false when any contributing call had no price")
    cached_input_tokens: int = Field(
        default=0, description="Of input_tokens, read from a prompt cache."
    )
    cache_hit_ratio: float | None = Field(
        default=None, description="cached_input_tokens / input_tokens (null before any input)."
    )


class RunOut(BaseModel):
    id: str
    agent: str
    agent_version: int
    parent_id: str | None
    status: str
    steps: int
    usage: Usage = Field(description="the run's own calls")
    tree_usage: Usage = Field(description="the run and all its descendants (sub-agents)")
    limits: dict[str, Any] | None = Field(
        default=None, description="limits raised or lowered over the spec's (`limits.changed`)"
    )
    input: str | None
    result: str | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None = Field(
        default=None, description="The latest ctx.progress() of a tool: done, total, note."
    )
    epoch: int
    lease_owner: str | None
    wake_at: float | None
    last_seq: int
    created_at: float
    updated_at: float
    outcome: str | None = Field(
        default=None,
        description="The grader's verdict (agents with `outcome:`): satisfied, "
        "not_satisfied, or revising while the agent works on feedback.",
    )
    truncated: bool = Field(
        default=False,
        description="True in a list when `input` or `result` was cut to its first 200 "
        "characters; GET /v1/runs/{id} returns them whole.",
    )


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class EventOut(BaseModel):
    run_id: str
    seq: int
    type: str
    ts: float
    data: dict[str, Any]


class MessageCreate(_In):
    content: str = Field(min_length=1, max_length=1_000_000)


class Decision(_In):
    approve: bool
    reason: str = Field(default="", max_length=10_000)


class ForkCreate(_In):
    seq: int = Field(ge=1, le=2**31 - 1)
    agent_version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class SecretPut(_In):
    value: str = Field(min_length=1, max_length=10_000)
    allow_urls: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list,
        max_length=100,
        description="URL patterns the secret may be sent to, e.g. https://api.openai.com/*",
    )

    @field_validator("allow_urls")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        from everruns.settings import check_url_pattern

        return [check_url_pattern(p) for p in value]


class LimitsChange(_In):
    """New limits for a run (POST /v1/runs/{id}/limits); only those given change."""

    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    max_llm_calls: int | None = Field(default=None, ge=1)
    deadline: float | str | None = Field(
        default=None, description="from now: seconds, or a duration like 30m, 2h"
    )


class Outcome(BaseModel):
    id: str
    outcome: str


class Receipt(BaseModel):
    """What a run verb produced: the seq of its journal event (None: requested, the run's
    worker has not journaled it within the wait)."""

    id: str
    outcome: str
    seq: int | None = None


class WebhookCreate(WebhookSpec):
    run_id: str | None = Field(default=None, max_length=40, description="Only this run's.")


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    secret_ref: str | None
    run_id: str | None
    created_at: float


class DeliveryOut(BaseModel):
    id: str
    webhook: str
    url: str
    run_id: str
    seq: int
    event_type: str
    status: str
    attempts: int
    history: list[dict[str, Any]]
    next_attempt_at: float | None
    created_at: float
    delivered_at: float | None
