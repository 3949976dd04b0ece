"""OpenAI Agents SDK agents, run durably on everruns.

    from everruns.integrations.openai_agents import EverrunsRunner
    result = await EverrunsRunner.run(agent, "...")     # a drop-in for Runner.run
    streamed = EverrunsRunner.run_streamed(agent, "...")  # ... and for Runner.run_streamed

The agent graph (the agent and every agent it can hand off to) is copied with each
agent's model wrapped in a `Model` whose `get_response` and `stream_response` go through
`everruns.engine.framework.FrameworkSession`, and each function tool's `on_invoke_tool`
(MCP tools included, wrapped as the SDK converts them) wrapped the same way, so every
model request and tool call of every agent is journaled (and served from the journal when
the run is resumed). Handoffs are the SDK's own: the transfer is a tool call in a
journaled model answer, replayed like any other; a `Handoff` object's target is mapped to
its durable copy. The loop always runs streamed, so text deltas reach `everruns watch`,
the API's live feed and the UI while a model answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner
from agents.items import ModelResponse, TResponseOutputItem
from agents.models.interface import Model, ModelProvider
from agents.models.multi_provider import MultiProvider
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import TypeAdapter
from pydantic_core import to_json, to_jsonable_python

from everruns.engine import framework
from everruns.engine.framework import FrameworkSession, ModelAnswer, ToolResult
from everruns.integrations import (
    EverrunsRunError,
    declared_effect,
    everruns_tool,
    run_in_process,
)
from everruns.integrations.mcp_servers import connected
from everruns.spec import AgentSpec, FrameworkAgent, Limits
from everruns.tools.base import ToolContext

__all__ = ["DurableRunStreaming", "EverrunsRunError", "EverrunsRunner", "everruns_tool", "execute"]

_OUTPUT: TypeAdapter[Any] = TypeAdapter(TResponseOutputItem)


def _label(model: Any) -> str:
    name = getattr(model, "model", None)
    return f"openai:{name}" if isinstance(name, str) else f"openai_agents:{type(model).__name__}"


def _answer(response: ModelResponse, label: str) -> ModelAnswer:
    items = [to_jsonable_python(item) for item in response.output]
    text = "".join(
        part.get("text", "")
        for item in items
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
    calls = [
        {"id": i["call_id"], "name": i["name"], "arguments": json.loads(i.get("arguments") or "{}")}
        for i in items
        if i.get("type") == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    usage = response.usage
    details = getattr(usage, "input_tokens_details", None)
    return ModelAnswer(
        message=message,
        usage={
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": int(getattr(details, "cached_tokens", 0) or 0),
        },
        model=label,
        payload={"output": items, "usage": [usage.input_tokens, usage.output_tokens]},
    )


def _response(payload: dict[str, Any]) -> ModelResponse:
    tokens_in, tokens_out = payload["usage"]
    usage = Usage(
        requests=1,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        total_tokens=tokens_in + tokens_out,
    )
    output = [_OUTPUT.validate_python(item) for item in payload["output"]]
    return ModelResponse(output=output, usage=usage, response_id=None)


def _streamed(event: ResponseCompletedEvent) -> ModelResponse:
    """The model response a live stream ended with."""
    usage = Usage(requests=1)
    given = event.response.usage
    if given is not None:
        usage = Usage(
            requests=1,
            input_tokens=given.input_tokens,
            output_tokens=given.output_tokens,
            total_tokens=given.total_tokens,
            input_tokens_details=given.input_tokens_details,
        )
    return ModelResponse(
        output=list(event.response.output), usage=usage, response_id=event.response.id
    )


def _completed(payload: dict[str, Any], model: str) -> ResponseCompletedEvent:
    """The `response.completed` stream event of a journaled answer (live and on replay
    alike, so the SDK continues from the same response either way)."""
    tokens_in, tokens_out = payload["usage"]
    response = Response(
        id="everruns-journaled",
        created_at=0.0,
        model=model,
        object="response",
        output=list(_response(payload).output),
        tool_choice="auto",
        tools=[],
        parallel_tool_calls=False,
        usage=ResponseUsage(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        ),
    )
    return ResponseCompletedEvent(response=response, type="response.completed", sequence_number=0)


class _JournalModel(Model):
    """A model whose answers are journaled (or served from the journal)."""

    def __init__(self, inner: Model, session: FrameworkSession):
        self.inner = inner
        self.session = session

    def _request(self, system_instructions: Any, input: Any, tools: Any, handoffs: Any) -> Any:
        names = [t.name for t in tools] + [h.tool_name for h in handoffs]
        items = input if isinstance(input, list) else [{"role": "user", "content": input}]
        messages = [{"system": system_instructions}, *to_jsonable_python(items, fallback=str)]
        return messages, names

    async def get_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        **kw: Any,
    ) -> Any:
        args = (model_settings, tools, output_schema, handoffs, tracing)
        messages, names = self._request(system_instructions, input, tools, handoffs)
        label = _label(self.inner)

        async def call() -> ModelAnswer:
            response = await self.inner.get_response(system_instructions, input, *args, **kw)
            return _answer(response, label)

        payload = await self.session.model_request(messages, names, label, call)
        return _response(payload)

    async def stream_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: Any,
        tools: Any,
        output_schema: Any,
        handoffs: Any,
        tracing: Any,
        **kw: Any,
    ) -> AsyncIterator[Any]:
        """Live: the inner model's stream events pass through (text deltas also go to
        `session.delta`), its final response is journaled once, then given to the SDK as
        one `response.completed` event. Replayed: only that event, no request sent."""
        args = (model_settings, tools, output_schema, handoffs, tracing)
        messages, names = self._request(system_instructions, input, tools, handoffs)
        label = _label(self.inner)
        events: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        async def call() -> ModelAnswer:
            completed: ResponseCompletedEvent | None = None
            async for event in self.inner.stream_response(system_instructions, input, *args, **kw):
                if isinstance(event, ResponseCompletedEvent):
                    completed = event
                    continue
                if isinstance(event, ResponseTextDeltaEvent):
                    self.session.delta(event.delta)
                events.put_nowait(event)
            if completed is None:
                raise RuntimeError("the model's stream ended without a response.completed event")
            return _answer(_streamed(completed), label)

        request = asyncio.ensure_future(self.session.model_request(messages, names, label, call))
        request.add_done_callback(lambda _: events.put_nowait(end))
        try:
            while (event := await events.get()) is not end:
                yield event
            payload = request.result()
        finally:
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        yield _completed(payload, label.partition(":")[2] or label)


class _JournalProvider(ModelProvider):
    """Models named by string (agent.model = "gpt-4.1") get the same wrapper."""

    def __init__(self, session: FrameworkSession, inner: ModelProvider | None = None):
        self.session = session
        self.inner = inner or MultiProvider()

    def get_model(self, model_name: str | None) -> Model:
        return _JournalModel(self.inner.get_model(model_name), self.session)


def _tool(tool: FunctionTool, session: FrameworkSession, effects: dict[str, str]) -> FunctionTool:
    """The tool with its calls journaled by effect class. The SDK's `needs_approval` becomes
    an everruns approval (the run parks durably); an agent used as a tool is one call."""
    effect = effects.get(tool.name) or declared_effect(tool) or "at_most_once"
    original = tool.on_invoke_tool
    needs = tool.needs_approval
    nested = tool._is_agent_tool

    async def on_invoke_tool(ctx: Any, raw: str) -> Any:
        arguments = json.loads(raw or "{}")
        ask = (
            needs
            if isinstance(needs, bool)
            else bool(await needs(ctx, arguments, ctx.tool_call_id))
        )
        if nested:  # the agent's own run is inside this call: not journaled step by step
            ctx.run_config = dataclasses.replace(ctx.run_config, model_provider=MultiProvider())

        async def run(_ctx: ToolContext) -> ToolResult:
            value = await original(ctx, raw)
            return ToolResult(value=to_jsonable_python(value, fallback=str))

        result = await session.tool_call(
            ctx.tool_call_id, tool.name, arguments, effect, run, approval=ask
        )
        return result.value if result.kind == "ok" else result.error

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool, needs_approval=False)


def _handoff(handoff: Handoff[Any, Any], durable: Callable[[Agent[Any]], Agent[Any]]) -> Any:
    """The handoff, handing off to the durable copy of the agent its callback returns (the
    `on_handoff` callback itself runs again on replay: it is not journaled)."""
    original = handoff.on_invoke_handoff

    async def on_invoke_handoff(ctx: Any, input_json: str) -> Agent[Any]:
        return durable(await original(ctx, input_json))

    copy = dataclasses.replace(handoff, on_invoke_handoff=on_invoke_handoff)
    target = handoff._agent_ref() if handoff._agent_ref is not None else None
    if isinstance(target, Agent):
        copy._agent_ref = weakref.ref(durable(target))
    return copy


def _durable(
    agent: Agent[Any],
    session: FrameworkSession,
    effects: dict[str, str],
    copies: dict[int, Agent[Any]],
) -> Agent[Any]:
    """A copy of the agent graph whose models and function tools are journaled."""
    if id(agent) in copies:
        return copies[id(agent)]
    model = agent.model
    if isinstance(model, Model):
        model = _JournalModel(model, session)
    tools = [_tool(t, session, effects) if isinstance(t, FunctionTool) else t for t in agent.tools]
    copy = agent.clone(model=model, tools=tools, handoffs=[])
    copies[id(agent)] = copy
    if agent.mcp_servers:
        _journal_mcp_tools(copy, session, effects)

    def durable(target: Agent[Any]) -> Agent[Any]:
        return _durable(target, session, effects, copies)

    copy.handoffs = [
        _handoff(h, durable) if isinstance(h, Handoff) else durable(h) for h in agent.handoffs
    ]
    return copy


def _journal_mcp_tools(
    copy: Agent[Any], session: FrameworkSession, effects: dict[str, str]
) -> None:
    """MCP tools are converted to function tools at each turn: wrap them as they come."""

    async def get_mcp_tools(run_context: Any) -> list[Any]:
        found = await Agent.get_mcp_tools(copy, run_context)
        return [_tool(t, session, effects) if isinstance(t, FunctionTool) else t for t in found]

    copy.get_mcp_tools = get_mcp_tools  # type: ignore[method-assign]


def _target(target: Any) -> tuple[Agent[Any], dict[str, str]]:
    if isinstance(target, _Registered):
        return target.agent, target.effects
    if not isinstance(target, Agent):
        raise ValueError(f"agent.python: {type(target).__name__} is not an OpenAI Agents SDK Agent")
    return target, {}


async def _stream(result: Any, session: FrameworkSession) -> None:
    """Drain a streamed run, handing each event to the in-process listener (if any)."""
    events = result.stream_events()
    try:
        async for event in events:
            await session.emit(event)
    except BaseException:
        result.cancel()
        raise
    finally:
        await events.aclose()


async def execute(target: Any, session: FrameworkSession) -> str:
    """The loop of a framework run (called by the worker): one streamed run per user
    message, each continuing the conversation of the previous ones with the agent that
    answered last (as the SDK's chat loops do)."""
    agent, extra = _target(target)
    assert session.spec.agent is not None
    copies: dict[int, Agent[Any]] = {}
    durable = _durable(agent, session, {**session.spec.agent.effects, **extra}, copies)
    config = RunConfig(model_provider=_JournalProvider(session), tracing_disabled=True)
    history: list[Any] = []
    result: Any = None
    servers = [s for copy in copies.values() for s in copy.mcp_servers]
    async with connected(servers):
        for prompt in session.inputs:
            user: Any = {"role": "user", "content": prompt}
            result = Runner.run_streamed(durable, [*history, user], run_config=config)
            await _stream(result, session)
            history = result.to_input_list()
            durable = result.last_agent  # the conversation goes on with the agent that answered
    session.output = result
    if result is None:
        return ""
    output = result.final_output
    return output if isinstance(output, str) else to_json(output, fallback=str).decode()


@dataclasses.dataclass
class _Registered:
    agent: Agent[Any]
    effects: dict[str, str]


# What Runner.run takes and EverrunsRunner does not, and why: a resumed run is rebuilt on
# any worker from the spec alone, so per-call objects cannot follow it.
_REFUSED = {
    "session": "the run's journal is its memory: continue a conversation by sending the run "
    "another message (`everruns send RUN_ID ...`, or EverrunsRunner.run with the same "
    "run_id after the message), not through an SDK Session",
    "context": "a resumed run is rebuilt on any worker from the spec alone; read what your "
    "tools need from the environment or your own store",
    "max_turns": "the everruns spec's limits bound the run (limits={'max_steps': ...})",
    "hooks": "hooks would run again on replay; watch the run's journal instead",
    "run_config": "the durable run builds its own RunConfig (models by name use the default "
    "provider)",
    "error_handlers": "a resumed run is rebuilt on any worker from the spec alone",
    "previous_response_id": "server-side conversation state is not replayable",
    "auto_previous_response_id": "server-side conversation state is not replayable",
    "conversation_id": "server-side conversation state is not replayable",
}


def _refuse(kwargs: dict[str, Any]) -> None:
    for name in kwargs:
        why = _REFUSED.get(name, "it is not an argument of Runner.run")
        raise TypeError(f"EverrunsRunner does not support {name}=: {why}")


def _spec(
    starting_agent: Agent[Any],
    ref: str | None,
    effects: dict[str, str] | None,
    approvals: list[str] | None,
    limits: Limits | dict[str, Any] | None,
) -> AgentSpec:
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in starting_agent.name)
    local = f"everruns.local:openai_agents.{name}"
    if ref is None:
        framework.register(local, _Registered(starting_agent, dict(effects or {})))
    return AgentSpec.model_validate(
        {
            "name": name or "openai-agent",
            "agent": FrameworkAgent(
                python=ref or local,
                framework="openai_agents",
                effects=dict(effects or {}),  # type: ignore[arg-type]
            ),
            "limits": Limits.model_validate(limits or {}),
            "approvals": {"require_for": list(approvals or [])},
        }
    )


class EverrunsRunner:
    """`await EverrunsRunner.run(agent, input)` in place of `Runner.run`: the run is an
    everruns run (journaled, resumable with the same `run_id`, budgeted).

    `ref`: `module:attribute` where workers can import the agent (so any worker can
    resume the run); without it the agent is registered in this process only.
    `effects`: tool name -> effect class; `approvals`: tools that wait for a human (the
    SDK's `needs_approval` does too); `limits`: the spec's limits; `db`: the database."""

    @classmethod
    async def run(
        cls,
        starting_agent: Agent[Any],
        input: str,
        *,
        run_id: str | None = None,
        ref: str | None = None,
        effects: dict[str, str] | None = None,
        approvals: list[str] | None = None,
        limits: Limits | dict[str, Any] | None = None,
        db: str | None = None,
        timeout: float | None = None,
        **unsupported: Any,
    ) -> Any:
        _refuse(unsupported)
        spec = _spec(starting_agent, ref, effects, approvals, limits)
        return await run_in_process(
            spec, input, run_id=run_id, db=db, timeout=timeout, execute=execute
        )

    @classmethod
    def run_sync(cls, starting_agent: Agent[Any], input: str, **kwargs: Any) -> Any:
        """`run`, blocking (not from inside a running event loop), like `Runner.run_sync`."""
        return asyncio.run(cls.run(starting_agent, input, **kwargs))

    @classmethod
    def run_streamed(
        cls,
        starting_agent: Agent[Any],
        input: str,
        *,
        run_id: str | None = None,
        ref: str | None = None,
        effects: dict[str, str] | None = None,
        approvals: list[str] | None = None,
        limits: Limits | dict[str, Any] | None = None,
        db: str | None = None,
        timeout: float | None = None,
        **unsupported: Any,
    ) -> DurableRunStreaming:
        """In place of `Runner.run_streamed` (call it inside a running event loop): the
        durable run starts now; `stream_events()` yields the SDK's stream events."""
        _refuse(unsupported)
        from everruns.store.records import new_id

        spec = _spec(starting_agent, ref, effects, approvals, limits)
        rid = run_id or new_id()
        return DurableRunStreaming(
            rid,
            input,
            lambda: run_in_process(
                spec, input, run_id=rid, db=db, timeout=timeout, execute=execute
            ),
        )


class DurableRunStreaming:
    """What `EverrunsRunner.run_streamed` returns: `stream_events()` yields the SDK's own
    stream events of the durable run (on a resumed run the replayed part comes first,
    each journaled answer as one `response.completed` raw event, no text deltas); once
    the run is complete, the SDK's `RunResultStreaming` attributes (`final_output`,
    `last_agent`, `new_items`, `raw_responses`, `to_input_list()`, ...) are those of the
    last user message's run. A run that does not complete (failed, cancelled, parked on
    an approval) raises EverrunsRunError from `stream_events()`."""

    def __init__(self, run_id: str, input: str, start: Callable[[], Any]):
        self.run_id = run_id
        self.input = input
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._end = object()
        self._result: Any = None
        self._error: BaseException | None = None
        framework.listen(run_id, self._events.put)
        self._task = asyncio.get_running_loop().create_task(self._run(start))

    async def _run(self, start: Callable[[], Any]) -> None:
        try:
            self._result = await start()
        except BaseException as exc:
            self._error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            framework.listen(self.run_id, None)
            self._events.put_nowait(self._end)

    async def stream_events(self) -> AsyncIterator[Any]:
        while (event := await self._events.get()) is not self._end:
            yield event
        if self._error is not None:
            raise self._error

    @property
    def is_complete(self) -> bool:
        return self._task.done() and self._error is None

    @property
    def final_output(self) -> Any:
        return self._result.final_output if self._result is not None else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._result is None:
            raise AttributeError(
                f"{name} is available once the run is complete (iterate stream_events() first)"
            )
        return getattr(self._result, name)
