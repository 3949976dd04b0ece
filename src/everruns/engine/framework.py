"""Framework runs: an agent written in another framework, executed durably by a worker.

The run's loop is the framework's (Pydantic AI's graph, the OpenAI Agents SDK's
runner), not `decide`. The adapter (everruns.integrations.<framework>) routes every
model request and tool call through a `FrameworkSession`, which journals them as the
native loop does (`llm.started/completed` with usage and cost, `tool.started/completed`
with effect classes), so the fold, the UI, budgets and the crash matrix see an
ordinary run.

On resume the framework's loop is executed again from the start and the session
serves what the journal holds, in order (deterministic replay): model request N gets
the journaled answer N if it asks the same thing (the request's digest is journaled
with `llm.started`), a tool call gets its journaled result. A different request at
step N, or a tool call the journal answered differently, fails the run with
"non-deterministic replay at step N: ...". A tool call started and never finished is
run again if `idempotent`/`pure`, and answered "interrupted, outcome unknown" if
`at_most_once` (the default), exactly as in native runs.

One file over 400 lines: the session, its replay checks and the few helpers the runner
and the adapters share (resolve, adapter, find) are one concept.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from everruns.core.decide import limit_breach
from everruns.core.events import INTERRUPTED_MESSAGE, Event, EventType
from everruns.engine.runlog import RunLog
from everruns.providers.base import ProviderError
from everruns.providers.pricing import cost_usd, price_for
from everruns.settings import Settings
from everruns.spec import AgentSpec, ModelSpec
from everruns.tools.base import Tool, ToolContext, render_output

ADAPTERS = {
    "pydantic_ai": "everruns.integrations.pydantic_ai",
    "openai_agents": "everruns.integrations.openai_agents",
}


def framework_model(request: Any) -> Any:
    """The placeholder `model` of a framework spec: the framework calls its own model."""
    raise ProviderError(
        "a framework agent calls its own model", error_class="invalid_request", retryable=False
    )


class NonDeterministicReplay(Exception):
    """The framework's loop asked something else than the journal recorded."""

    def __init__(self, step: int, detail: str):
        super().__init__(f"non-deterministic replay at step {step}: {detail}")
        self.step = step


class RunStop(Exception):
    """A limit or budget stops the run before the next model request."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Parked(Exception):
    """A tool call waits for a human's approval: the run parks durably."""


class Interrupted(Exception):
    """The worker asked the run to stop between two steps: `pause` or `drain` (shutdown)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@dataclass
class ModelAnswer:
    """A live model answer: the assistant message in everruns' form (for the fold and
    the UI), its usage, the model's label, and the framework's own response (`payload`,
    JSON) that the replay gives back."""

    message: dict[str, Any]
    usage: dict[str, Any]
    model: str
    payload: Any
    stop_reason: str | None = None


@dataclass
class ToolResult:
    """kind: ok (value) | retry (the framework's "try again" to the model) | error |
    interrupted | denied (`error` is the text the model gets)."""

    value: Any = None
    kind: str = "ok"
    error: str | None = None


# The testing plugin's worker wraps each framework tool execution (execution ledger).
prepare_tool: Callable[[Tool], Tool] = lambda tool: tool  # noqa: E731

_local: dict[str, Any] = {}


def register(ref: str, target: Any) -> None:
    """Make an in-process object the target of `ref` (EverrunsAgent without a `ref`)."""
    _local[ref] = target


def resolve(ref: str) -> Any:
    """The framework object a spec names: registered in this process, or imported."""
    if ref in _local:
        return _local[ref]
    module_name, _, attribute = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent.python: cannot import module {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"agent.python: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def digest(messages: list[Any], tools: list[str]) -> dict[str, Any]:
    """What a model request asked, compactly: one short hash per message, the tool names."""
    return {
        "tools": sorted(tools),
        "messages": [
            hashlib.sha256(json.dumps(m, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for m in messages
        ],
    }


def explain(want: dict[str, Any], got: dict[str, Any], messages: list[Any]) -> str:
    if want.get("tools") != got["tools"]:
        return f"the tools differ: journaled {want.get('tools')}, now {got['tools']}"
    old, new = want.get("messages") or [], got["messages"]
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            text = json.dumps(messages[i], sort_keys=True, default=str)
            return f"message {i + 1} of the request differs from the journaled one: {text[:300]}"
    return f"the request has {len(new)} messages, the journaled one {len(old)}"


class FrameworkSession:
    """Serves a framework's model requests and tool calls from the journal, or runs them
    live and journals them. `log` None: read-only (rebuild a finished run's result)."""

    def __init__(
        self,
        log: RunLog | None,
        run_id: str,
        spec: AgentSpec,
        settings: Settings,
        events: list[Event],
    ):
        self.log = log
        self.run_id = run_id
        self.spec = spec
        self.settings = settings
        self.inputs: list[str] = []
        self.steps: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.started: dict[str, dict[str, Any]] = {}
        self.results: dict[str, Event] = {}
        # The caller's per-run dependencies as JSON (Pydantic AI's deps, the OpenAI Agents
        # SDK's context), journaled in run.created; None: none given (see
        # everruns.integrations.deps, which rebuilds them).
        self.deps: Any = None
        started: dict[str, Any] = {}
        for e in events:
            if e.type == EventType.RUN_CREATED:
                self.deps = e.data.get("deps")
            if e.type == EventType.RUN_CREATED and e.data.get("input") is not None:
                self.inputs.append(str(e.data["input"]))
            elif e.type == EventType.MESSAGE_USER:
                self.inputs.append(str(e.data["content"]))
            elif e.type == EventType.LLM_STARTED:
                started = e.data
            elif e.type == EventType.LLM_COMPLETED:
                self.steps.append((started, e.data))
            elif e.type == EventType.TOOL_STARTED:
                self.started[e.data["call_id"]] = e.data
            elif e.type in (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED):
                self.results[e.data["call_id"]] = e
        # Model requests answered in this execution so far (replayed or live). A failed
        # attempt is not counted: the framework's retry of it is the same step.
        self.step = 0
        self.replayed = 0
        # Asked before each live model request: "pause" / "drain" stops the run there.
        self.interrupt: Callable[[], str | None] = lambda: None
        self.output: Any = None  # the framework's result object, set by the adapter
        # An in-process caller's consumer of the framework's own stream events
        # (EverrunsAgent.run_stream_events, EverrunsRunner.run_streamed); None otherwise.
        self.listener: Callable[[Any], Awaitable[None]] | None = _listeners.get(run_id)
        self.attempt = 0  # the attempt of the live model request (its deltas carry it)

    # ------------------------------------------------------------ model requests

    async def model_request(
        self,
        messages: list[Any],
        tools: list[str],
        model: str,
        call: Callable[[], Awaitable[ModelAnswer]],
    ) -> Any:
        """The framework's response payload for its next model request."""
        n = self.step + 1
        request = digest(messages, tools)
        if n <= len(self.steps):
            started, completed = self.steps[n - 1]
            want = started.get("request")
            if want is not None and want != request:
                raise NonDeterministicReplay(n, explain(want, request, messages))
            if "framework" not in completed:
                raise NonDeterministicReplay(n, "the journaled answer is not a framework answer")
            self.replayed += 1
            self.step = n
            return completed["framework"]
        log = self._live(n, "a model request")
        why = self.interrupt()
        if why is not None:
            raise Interrupted(why)
        breach = limit_breach(log.state, self.spec, time.time())
        if breach is not None:
            raise RunStop(breach.reason, breach.message)
        attempt = self.attempt = log.state.attempt + 1
        await log.append(
            EventType.LLM_STARTED,
            {"attempt": attempt, "step": n, "model": model, "request": request},
        )
        try:
            answer = await call()
        except Exception as exc:
            await log.append(
                EventType.LLM_FAILED,
                {
                    "attempt": attempt,
                    "model": model,
                    "error": f"{type(exc).__name__}: {exc}",
                    "class": "framework_error",
                    "retryable": True,  # the framework decides; the run fails if it gives up
                    "retry_at": None,
                },
            )
            raise
        self.step = n
        usage = {**answer.usage, "cost_usd": cost_usd(answer.usage, self._price(answer.model))}
        await log.append(
            EventType.LLM_COMPLETED,
            {
                "attempt": attempt,
                "message": answer.message,
                "usage": usage,
                "model": answer.model,
                "stop_reason": answer.stop_reason,
                "framework": answer.payload,
            },
        )
        return answer.payload

    def delta(self, text: str) -> None:
        """A live text delta of the model request in flight: streamed to `everruns watch`,
        the API's live feed and the UI exactly as a native run's (ephemeral, never
        journaled; the answer is journaled whole with `llm.completed`)."""
        if self.log is not None and text:
            self.log.publish_ephemeral("llm.delta", {"attempt": self.attempt, "text": text})

    async def emit(self, event: Any) -> None:
        """Hand one of the framework's own stream events to the in-process caller, if any."""
        if self.listener is not None:
            await self.listener(event)

    def _price(self, label: str) -> Any:
        if self.spec.model.pricing is not None:
            return self.spec.model.pricing
        provider, _, name = label.partition(":")
        try:
            model = ModelSpec.model_validate({"provider": provider, "name": name})
        except ValueError:
            return None
        return price_for(model, self.settings.prices)

    def _live(self, step: int, what: str) -> RunLog:
        if self.log is None:
            raise NonDeterministicReplay(step, f"the journal has no result for {what}")
        return self.log

    # ------------------------------------------------------------ tool calls

    async def tool_call(
        self,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        effect: str,
        run: Callable[[ToolContext], Awaitable[ToolResult]],
        approval: bool = False,
    ) -> ToolResult:
        """The result of one tool call: journaled, or run now (by its effect class).
        `approval`: this call waits for a human even if the spec does not list the tool
        (the framework's own "needs approval" flag)."""
        done = self.results.get(call_id)
        if done is not None:
            return self._replayed(done, call_id, name, arguments)
        log = self._live(self.step, f"tool call {call_id} ({name})")
        base = {"call_id": call_id, "name": name}
        denied = await self._approval(log, call_id, name, arguments, approval)
        if denied is not None:
            return denied
        previous = self.started.get(call_id)
        if previous is not None and effect == "at_most_once":
            await log.append(
                EventType.TOOL_FAILED, {**base, "error": INTERRUPTED_MESSAGE, "interrupted": True}
            )
            return ToolResult(kind="interrupted", error=INTERRUPTED_MESSAGE)
        attempt = int(previous.get("attempt", 0)) + 1 if previous else 1
        key = f"{self.run_id}:{call_id}"
        await log.append(
            EventType.TOOL_STARTED,
            {
                **base,
                "attempt": attempt,
                "effect": effect,
                "idempotency_key": key,
                "arguments": arguments,
            },
        )

        async def invoke(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
            return await run(ctx)

        tool = prepare_tool(Tool(name, name, {}, effect, invoke))
        ctx = ToolContext(self.run_id, call_id, key, attempt, agent=self.spec.name)
        try:
            result = await tool.invoke(arguments, ctx)
        except Exception as exc:
            await log.append(
                EventType.TOOL_FAILED, {**base, "error": f"{type(exc).__name__}: {exc}"}
            )
            raise
        if result.kind == "ok":
            await log.append(
                EventType.TOOL_COMPLETED,
                {**base, "output": render_output(result.value), "value": result.value},
            )
        else:
            await log.append(EventType.TOOL_FAILED, {**base, "error": result.error, "retry": True})
        return result

    def _replayed(
        self, done: Event, call_id: str, name: str, arguments: dict[str, Any]
    ) -> ToolResult:
        if done.data.get("name") != name:
            raise NonDeterministicReplay(
                self.step,
                f"tool call {call_id}: the journal has a result of {done.data.get('name')!r}, "
                f"the agent now calls {name!r}",
            )
        journaled = (self.started.get(call_id) or {}).get("arguments")
        if journaled is not None and journaled != arguments:
            raise NonDeterministicReplay(
                self.step,
                f"tool call {call_id} ({name}): journaled with arguments {journaled}, "
                f"now {arguments}",
            )
        data = done.data
        if done.type == EventType.TOOL_COMPLETED:
            return ToolResult(value=data.get("value", data.get("output")))
        if data.get("interrupted"):
            return ToolResult(kind="interrupted", error=str(data.get("error")))
        if data.get("denied"):
            return ToolResult(kind="denied", error=str(data.get("error")))
        return ToolResult(kind="retry" if data.get("retry") else "error", error=data.get("error"))

    async def _approval(
        self, log: RunLog, call_id: str, name: str, arguments: dict[str, Any], required: bool
    ) -> ToolResult | None:
        """Tools the spec lists under `approvals.require_for` wait for a human (durably)."""
        if not required and name not in self.spec.approvals.require_for:
            return None
        decided = await self._decide(log, [(call_id, name, arguments)])
        if call_id not in decided:
            raise Parked(call_id)
        return decided[call_id]

    async def approvals(
        self, calls: list[tuple[str, str, dict[str, Any]]]
    ) -> dict[str, ToolResult | None]:
        """Calls the framework itself holds for a human (`(call id, name, arguments)`, e.g.
        Pydantic AI's `requires_approval=True` tools): each call's decision, None when
        granted or its denial (journaled once; the model gets `error`). While any call is
        undecided, every undecided one is asked for (`approval.requested`, once) and the
        run parks (Parked)."""
        decided: dict[str, ToolResult | None] = {}
        todo = []
        for call_id, name, arguments in calls:
            done = self.results.get(call_id)
            if done is None:
                todo.append((call_id, name, arguments))
            elif done.data.get("denied"):  # replayed
                decided[call_id] = ToolResult(kind="denied", error=str(done.data.get("error")))
            else:
                decided[call_id] = None
        if todo:
            log = self._live(self.step, f"the approval of tool call {todo[0][0]} ({todo[0][1]})")
            decided.update(await self._decide(log, todo))
            if len(decided) < len(calls):
                raise Parked(", ".join(c for c, _, _ in calls if c not in decided))
        return decided

    async def _decide(
        self, log: RunLog, calls: list[tuple[str, str, dict[str, Any]]]
    ) -> dict[str, ToolResult | None]:
        """The decided calls among `calls` (None: granted; a denial is journaled); the
        others are asked for once."""
        decided: dict[str, ToolResult | None] = {}
        for call_id, name, arguments in calls:
            call = next((c for c in log.state.calls if c.id == call_id), None)
            status = call.approval if call is not None else None
            if status == "granted":
                decided[call_id] = None
            elif status == "denied":
                reason = (call.denial if call else None) or "no reason given"
                error = f"denied by a human: {reason}"
                await log.append(
                    EventType.TOOL_FAILED,
                    {"call_id": call_id, "name": name, "error": error, "denied": True},
                )
                decided[call_id] = ToolResult(kind="denied", error=error)
            elif status is None:
                await log.append(
                    EventType.APPROVAL_REQUESTED,
                    {"call_id": call_id, "name": name, "arguments": arguments},
                )
        return decided


Execute = Callable[[Any, FrameworkSession], Awaitable[str]]


def adapter(framework: str) -> Execute:
    """The `execute(target, session) -> result text` of a framework's integration."""
    try:
        module = importlib.import_module(ADAPTERS[framework])
    except ImportError as exc:
        extra = framework.replace("_", "-")
        raise ValueError(
            f"agent.framework {framework!r}: its integration cannot be imported ({exc}); "
            f"install it with `pip install everruns[{extra}]`"
        ) from None
    execute: Execute = module.execute
    return execute


def find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first exception of type `kind` inside it: in exception groups, or
    as the cause of a framework's own error (the OpenAI Agents SDK wraps what a tool
    raises in a UserError)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


# The framework's result object of each run an in-process caller waits for (`expect`):
# only those, so a long-lived worker keeps nothing.
outputs: dict[str, Any] = {}
_expected: set[str] = set()
# The stream consumer of each run an in-process caller streams (`listen`).
_listeners: dict[str, Callable[[Any], Awaitable[None]]] = {}


def listen(run_id: str, listener: Callable[[Any], Awaitable[None]] | None) -> None:
    """Give the framework's stream events of `run_id`, when it executes in this process,
    to `listener` (None: stop)."""
    if listener is None:
        _listeners.pop(run_id, None)
    else:
        _listeners[run_id] = listener


def expect(run_id: str) -> None:
    _expected.add(run_id)


def take(run_id: str) -> Any:
    """The result object of a run `expect`ed in this process (None if it ran elsewhere)."""
    _expected.discard(run_id)
    return outputs.pop(run_id, None)


async def execute_run(
    log: RunLog,
    events: list[Event],
    spec: AgentSpec,
    settings: Settings,
    interrupt: Callable[[], str | None] = lambda: None,
) -> str:
    """Execute a framework run's loop to its end (replaying what is journaled) and
    return the result text. Raises RunStop, NonDeterministicReplay or Parked (maybe
    inside an exception group: see `find`), or what the framework raised."""
    assert spec.agent is not None
    execute = adapter(spec.agent.framework)
    target = resolve(spec.agent.python)
    session = FrameworkSession(log, log.run_id, spec, settings, events)
    session.interrupt = interrupt
    session.listener = _listeners.get(log.run_id)
    text = await execute(target, session)
    if log.run_id in _expected:
        outputs[log.run_id] = session.output
    return text
