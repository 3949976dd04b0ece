"""Agent specification: what a run executes.

A spec is plain data (pydantic), loaded from YAML or built in Python. When a
run starts, the spec is stored as an immutable agent version, so a run always
continues with the configuration it started with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from everruns.core.durations import parse_duration
from everruns.core.files import DEFAULT_EXCLUDE
from everruns.core.schedule import parse_schedule
from everruns.errors import SpecError

Effect = Literal["pure", "idempotent", "at_most_once"]
EFFECTS: tuple[str, ...] = ("pure", "idempotent", "at_most_once")


class _Strict(BaseModel):
    # No NaN or infinity anywhere in a spec: `deadline: .nan` would be silently ignored
    # and `max_cost_usd: .inf` is no limit; both are refused, naming the field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScriptedToolCall(_Strict):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class Usage(_Strict):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = Field(default=0, ge=0, description="of input_tokens, cache reads")


class ScriptedResponse(_Strict):
    """One answer of the scripted provider: text, tool calls, or both."""

    text: str | None = None
    tool_calls: list[ScriptedToolCall] | None = None
    delay: float = 0.0
    usage: Usage | None = None
    error: str | None = Field(default=None, description="Fail this attempt with this message.")
    error_class: str = Field(
        default="server_error", description="The error class of `error` (see providers/errors.py)."
    )
    error_times: int | None = Field(
        default=None,
        ge=1,
        description="Fail only the first N attempts of this step (default: all).",
    )

    @model_validator(mode="after")
    def _has_content(self) -> ScriptedResponse:
        if self.text is None and not self.tool_calls and self.error is None:
            raise ValueError("a scripted response needs `text`, `tool_calls` or `error`")
        return self


class Timeouts(_Strict):
    """Per LLM call: connect, read (between bytes), stream_idle (between deltas), total."""

    connect: float = 10.0
    read: float = 120.0
    stream_idle: float = 90.0
    total: float = 900.0

    @field_validator("connect", "read", "stream_idle", "total", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)


class Pricing(_Strict):
    """US dollars per million tokens. `input_per_mtok` / `output_per_mtok` /
    `cached_input_per_mtok` are the documented spellings; `input` / `output` /
    `cached_input` are accepted too."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: float = Field(ge=0, validation_alias=AliasChoices("input_per_mtok", "input"))
    output: float = Field(ge=0, validation_alias=AliasChoices("output_per_mtok", "output"))
    cached_input: float | None = Field(
        default=None,
        ge=0,
        validation_alias=AliasChoices("cached_input_per_mtok", "cached_input"),
        description="a prompt-cache read",
    )
    cache_write: float | None = Field(
        default=None, ge=0, description="a 5-minute prompt-cache write (default: 1.25x input)"
    )
    cache_write_1h: float | None = Field(
        default=None, ge=0, description="a 1-hour prompt-cache write (default: 2x input)"
    )


class ToolChoiceName(_Strict):
    name: str = Field(min_length=1)


ToolChoice = Literal["auto", "required", "none"] | ToolChoiceName


class ModelSpec(_Strict):
    """Which model answers. Written as `provider:name` or as an object.

    `parameters` are checked against the installed SDK (everruns.providers.options):
    keys its create() accepts pass through, the rest are sent in the request body.
    """

    provider: Literal["scripted", "python", "openai", "anthropic", "openai-compatible"]
    name: str | None = None
    function: str | None = Field(
        default=None, description="provider python: `package.module:function` that answers"
    )
    base_url: str | None = None
    credential: str | None = Field(
        default=None,
        description="the name of a credential the operator bound to URLs (settings or "
        "`everruns secret set`)",
    )
    api_key_env: str | None = Field(
        default=None, description="only in specs loaded from local files by the CLI"
    )
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    pricing: Pricing | None = None
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="auto | required | none | {name: TOOL}; required and a name hold until "
        "the turn's first tool result, then the model chooses (so a forced run can answer)",
    )
    on_truncated: Literal["accept", "continue", "fail"] = Field(
        default="accept",
        description="an answer cut off at max_tokens: keep it marked (accept), ask the model "
        "to continue and join the parts (continue), or fail the run (fail)",
    )
    cache: Literal["auto", "1h", "off"] = Field(
        default="auto",
        description="prompt caching: auto places Anthropic cache breakpoints on the system "
        "prompt, the tools and the conversation so far (5-minute cache; 1h: the 1-hour cache, "
        "dearer writes); OpenAI caches by itself",
    )
    responses: list[ScriptedResponse] | None = None
    fallbacks: list[ModelSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            provider, sep, name = value.partition(":")
            if not sep or not provider or not name:
                raise ValueError(f"{value!r} is not `provider:model` (e.g. openai:gpt-4.1)")
            return {"provider": provider, "name": name}
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.provider == "scripted":
            if not self.responses:
                raise ValueError("the scripted provider needs a non-empty `responses` list")
        elif self.provider == "python":
            if not self.function or ":" not in self.function:
                raise ValueError(
                    "provider 'python' needs `function: package.module:function` "
                    "(e.g. mypkg.fake:respond)"
                )
        elif self.name is None:
            raise ValueError(f"provider {self.provider!r} needs a model `name`")
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("provider 'openai-compatible' needs a `base_url`")
        if self.credential is not None and self.api_key_env is not None:
            raise ValueError("give either `credential` or `api_key_env`, not both")
        problems = parameter_problems(self.provider, self.parameters)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def offline(self) -> bool:
        """Answered in-process (scripted or python): no breaker, no shared health."""
        return self.provider in ("scripted", "python")

    @property
    def label(self) -> str:
        if self.provider == "python":
            return f"python:{self.name or self.function}"
        return f"{self.provider}:{self.name or 'script'}"


class ToolRetry(_Strict):
    """Retries of one tool's calls: on `RetryLater` (any effect) and on transient
    failures (5xx, connection; not for `at_most_once` tools). Back-off as for LLM calls."""

    max_attempts: int = Field(default=5, ge=1, description="attempts of one call in all")
    initial_backoff: float = Field(default=1.0, ge=0)
    max_backoff: float = Field(default=60.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)

    @field_validator("initial_backoff", "max_backoff", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)


class ToolRateLimit(_Strict):
    """A fleet-wide budget for a tool's calls, shared by every worker through the database
    (the token buckets of the provider rate limits). Tools with the same `key` share it."""

    key: str = Field(min_length=1, max_length=200)
    rpm: float | None = Field(default=None, gt=0, description="calls per minute")
    concurrency: int | None = Field(default=None, ge=1, description="calls at once")

    @model_validator(mode="after")
    def _some_limit(self) -> ToolRateLimit:
        if self.rpm is None and self.concurrency is None:
            raise ValueError("a rate_limit needs `rpm`, `concurrency` or both")
        return self


class ToolSpec(_Strict):
    """One tool source: a Python function, a built-in, or an MCP server."""

    python: str | None = None
    builtin: str | None = None
    mcp: dict[str, Any] | None = None
    effect: Effect | None = None
    timeout: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    retry: ToolRetry | None = None
    rate_limit: ToolRateLimit | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"python": value}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ToolSpec:
        kinds = [k for k in ("python", "builtin", "mcp") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a tool needs exactly one of `python`, `builtin` or `mcp`")
        if self.python is not None and ":" not in self.python:
            raise ValueError(f"{self.python!r} is not `package.module:function`")
        return self

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


class Limits(_Strict):
    max_steps: int | None = Field(default=50, ge=1)
    max_llm_calls: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    deadline: float | None = Field(default=None, description="seconds; written as 30m, 6h, 2d")
    unpriced: Literal["reject", "allow"] | None = Field(
        default=None,
        description="max_cost_usd with a model that has no price: rejected at validation "
        "(reject, the default), or allowed with only the priced calls counted (allow; "
        "tokens still count)",
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


class RetryPolicy(_Strict):
    """LLM call retries, back-off, durable waits and the circuit breaker."""

    max_attempts: int = Field(
        default=8, ge=1, description="consecutive failed attempts of one step"
    )
    initial_backoff: float = Field(default=1.0, ge=0)
    max_backoff: float = Field(default=300.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    durable_wait_after: float = Field(
        default=5.0, ge=0, description="waits longer than this release the worker"
    )
    breaker_threshold: int = Field(default=3, ge=1, description="consecutive failures that open it")
    breaker_cooldown: float = Field(default=60.0, ge=0)

    @field_validator(
        "initial_backoff", "max_backoff", "durable_wait_after", "breaker_cooldown", mode="before"
    )
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)


class Approvals(_Strict):
    require_for: list[str] = Field(default_factory=list)


class ContextPolicy(_Strict):
    """Context compaction: keep the model's input under `max_tokens`."""

    max_tokens: int | None = Field(default=None, ge=200, description="compact above this estimate")
    keep_recent: int = Field(default=20, ge=1, description="messages kept verbatim")
    summary_model: ModelSpec | None = Field(default=None, description="a cheaper summarizer")


# Journal events a webhook may subscribe to (docs: README "Webhooks").
WEBHOOK_EVENTS: tuple[str, ...] = (
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.paused",
    "run.interrupted",
    "approval.requested",
    "outcome.graded",
)


class WebhookSpec(_Strict):
    """POST the run's `events` to `url`, signed with the stored secret `secret_ref`."""

    url: str = Field(min_length=1, max_length=2000)
    events: list[str] = Field(
        default_factory=lambda: ["run.completed", "run.failed"],
        min_length=1,
        description="any of " + ", ".join(WEBHOOK_EVENTS),
    )
    secret_ref: str | None = Field(
        default=None,
        max_length=128,
        description="a stored secret (`everruns secrets set`) that signs the deliveries",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(
                f"unknown event(s) {', '.join(unknown)}; choose from {', '.join(WEBHOOK_EVENTS)}"
            )
        return value


class GraderSpec(_Strict):
    model: ModelSpec


class OutcomeSpec(_Strict):
    """Grade the agent's final answer against `rubric`; on failure the grader's feedback
    goes back to the agent, up to `max_iterations` answers in all."""

    rubric: str = Field(min_length=1, max_length=100_000)
    grader: GraderSpec
    max_iterations: int = Field(default=3, ge=1, le=20)


class WorkspacePolicy(_Strict):
    """The run's workspace: files matching `exclude` are neither handed in (--file,
    --dir) nor journaled when a tool writes them. `name/` is a folder anywhere;
    other patterns match a file name or a whole path (fnmatch)."""

    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))


FRAMEWORKS: tuple[str, ...] = ("pydantic_ai", "openai_agents")
# The `model` of a framework run: the framework's agent calls its own model, this is a label.
FRAMEWORK_MODEL = "everruns.engine.framework:framework_model"


class FrameworkAgent(_Strict):
    """An agent written in another framework, run durably (see engine/framework.py)."""

    python: str = Field(description="`package.module:attribute` of the framework's agent object")
    framework: Literal["pydantic_ai", "openai_agents"]
    effects: dict[str, Effect] = Field(
        default_factory=dict, description="effect class per tool name (default at_most_once)"
    )
    # Unset stays out of to_dict() (stored versions of older specs keep their hash).
    deps: Any = Field(
        default=None,
        description="the runs' dependencies (Pydantic AI deps, the OpenAI Agents SDK's run "
        "context) as JSON, for runs started without their own",
    )

    @field_validator("python")
    @classmethod
    def _reference(cls, value: str) -> str:
        module, sep, attribute = value.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"{value!r} is not `package.module:attribute`")
        return value

    @field_validator("deps")
    @classmethod
    def _json(cls, value: Any) -> Any:
        problem = json_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def json_problem(value: Any, where: str = "") -> str | None:
    """Why `value` is not plain JSON (None if it is): the first offending part, named."""
    at = f" at {where}" if where else ""
    what = where or "the value"
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{what} is {value}, not a JSON number"
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = json_problem(item, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the key {key!r}{at} is not a string"
            problem = json_problem(item, f"{where}.{key}" if where else key)
            if problem is not None:
                return problem
        return None
    return f"{what} is of type {type(value).__name__}, not a JSON value (quote it in YAML)"


class AgentSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    description: str | None = None
    model: ModelSpec
    agent: FrameworkAgent | None = Field(
        default=None,
        description="run an agent of another framework: {python: module:attr, framework: "
        "pydantic_ai | openai_agents}; its loop, model and tools replace model/tools here",
    )
    system_prompt: str = "You are a helpful assistant."
    tools: list[ToolSpec] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    approvals: Approvals = Field(default_factory=Approvals)
    context: ContextPolicy = Field(default_factory=ContextPolicy)
    # Unset stays out of to_dict() (stored versions of older specs keep their hash).
    workspace: WorkspacePolicy | None = Field(default=None, description="exclude: [...]")
    max_parallel_tools: int = Field(default=4, ge=1)
    python_path: list[str] | None = Field(
        default=None,
        description="directories Python tools are imported from, relative to the spec file "
        "(default: the spec file's own directory); only in specs loaded from local files",
    )
    # Scheduled runs (see everruns.core.schedule): cron (5 fields, or 6 with seconds
    # first) or `every <duration>`, in UTC. Unset fields stay out of to_dict().
    schedule: str | None = Field(default=None, description="cron or `every <duration>` (UTC)")
    schedule_input: str | None = Field(default=None, description="input of each scheduled run")
    schedule_overlap: Literal["skip", "queue", "cancel_previous"] | None = Field(
        default=None,
        description="when the previous scheduled run is still active: skip (default), "
        "queue, or cancel_previous",
    )
    webhooks: list[WebhookSpec] | None = Field(
        default=None, description="webhooks told about every run of this agent"
    )
    outcome: OutcomeSpec | None = Field(
        default=None, description="a grader checks the final answer against a rubric"
    )

    @model_validator(mode="before")
    @classmethod
    def _framework_model(cls, value: Any) -> Any:
        """A framework agent brings its own model: `model` may be left out."""
        if isinstance(value, dict) and value.get("agent") is not None and "model" not in value:
            agent = value["agent"]
            name = agent.get("framework") if isinstance(agent, dict) else None
            return {
                **value,
                "model": {"provider": "python", "function": FRAMEWORK_MODEL, "name": name},
            }
        return value

    @model_validator(mode="after")
    def _framework_alone(self) -> AgentSpec:
        if self.agent is not None and self.tools:
            raise ValueError(
                "a framework agent (`agent`) brings its own tools: leave `tools` out "
                "(declare effects under `agent.effects`)"
            )
        return self

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return parse_schedule(value).expression

    @property
    def workspace_exclude(self) -> list[str]:
        return (self.workspace or WorkspacePolicy()).exclude

    @property
    def overlap(self) -> str:
        return self.schedule_overlap or "skip"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after", "function-before") or str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def parse_spec(data: Any, source: str = "<spec>") -> AgentSpec:
    """Validate a mapping into an AgentSpec, raising SpecError with field paths."""
    if not isinstance(data, dict):
        raise SpecError(source, [("", "the spec must be a mapping of fields (name, model, ...)")])
    try:
        return AgentSpec.model_validate(data)
    except RecursionError:
        raise SpecError(source, [("", "the spec is nested too deeply")]) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((_field_path(tuple(err["loc"])), msg))
        raise SpecError(source, problems) from None


def load_yaml(text: str, source: str) -> Any:
    """The data of a YAML document, or SpecError naming the line (or the nesting)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise SpecError(
            source, [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]
        ) from None
    except RecursionError:
        raise SpecError(
            source, [("", "the YAML is nested too deeply to be a spec (a few levels suffice)")]
        ) from None


def load_spec(path: str | Path) -> AgentSpec:
    """Load an agent spec from a YAML file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, [("", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError(source, [("", "is a directory; give the spec's YAML file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            source,
            [
                (
                    "",
                    f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                    "save the spec as UTF-8",
                )
            ],
        ) from None
    except OSError as exc:
        raise SpecError(source, [("", f"cannot read: {exc.strerror}")]) from None
    return with_python_path(spec_from_yaml(text, source), path.parent)


def spec_from_yaml(text: str, source: str = "<spec>") -> AgentSpec:
    """An agent spec from YAML text; SpecError names the line of a YAML error (the CLI
    and `POST /v1/agents {yaml}`, hence the web UI's editor, report the same errors)."""
    return parse_spec(load_yaml(text, source), source)


def with_python_path(spec: AgentSpec, directory: Path) -> AgentSpec:
    """A spec loaded from `directory` imports its Python tools from there (or from its
    `python_path`, relative to there): absolute paths, so any worker on this machine, in
    any working directory, finds the same modules."""
    if not any(t.python is not None for t in spec.tools):
        return spec
    dirs = [str((directory / d).resolve()) for d in (spec.python_path or ["."])]
    return spec.model_copy(update={"python_path": dirs})


# ---------------------------------------------------------------- model.parameters
# The rules a spec's `model.parameters` must follow whatever the SDK (pure; the SDK-aware
# split into keywords and `extra_body` is providers/options.py).

# Set by everruns on every call; a spec cannot override them.
RESERVED = frozenset(
    {
        "self",
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "system",
        "timeout",
        "extra_headers",
        "extra_query",
        "functions",
        "function_call",
    }
)
# Spelled elsewhere in the spec, where they are mapped per provider.
MOVED = {"tool_choice": "model.tool_choice"}
_INTS = {"max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "top_k"}
_NUMBERS = {"temperature", "top_p", "frequency_penalty", "presence_penalty"}


def parameter_problems(provider: str, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with `model.parameters` for this provider, one sentence each."""
    if provider == "scripted":
        return []
    problems: list[str] = []
    for key, value in params.items():
        name = f"parameters.{key}"
        if key in RESERVED:
            problems.append(f"{name}: is set by everruns and cannot be given")
        elif key in MOVED:
            problems.append(f"{name}: write it as {MOVED[key]}")
        elif key == "extra_body" and not isinstance(value, dict):
            problems.append(f"{name}: must be a mapping of request-body fields")
        elif key in _INTS and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name}: must be an integer, not {value!r}")
        elif key in _INTS and value < 1 and key != "seed":
            problems.append(f"{name}: must be at least 1, not {value!r}")
        elif key in _NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{name}: must be a number, not {value!r}")
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                problems.append(f"{name}: is not JSON data ({type(value).__name__})")
    return problems
