"""The durable copy of an OpenAI Agents SDK agent graph (everruns.integrations.openai_agents).

Every agent reachable from the starting one (handoffs to agents and `Handoff` objects) is
cloned: its `Model` wrapped in `JournalModel`, whose `get_response` and `stream_response`
go through `everruns.engine.framework.FrameworkSession` (journaled, or served from the
journal on replay), and each function tool's `on_invoke_tool` wrapped with its effect
class (MCP tools as the SDK converts them, at each turn). Models named by string get the
same wrapper through `JournalProvider`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import Agent, FunctionTool, Handoff
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
from pydantic_core import to_jsonable_python

from everruns.engine.framework import FrameworkSession, ModelAnswer, ToolResult
from everruns.integrations import declared_effect
from everruns.tools.base import ToolContext

__all__ = ["JournalModel", "JournalProvider", "durable_copy"]

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


class JournalModel(Model):
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


class JournalProvider(ModelProvider):
    """Models named by string (agent.model = "gpt-4.1") get the same wrapper."""

    def __init__(self, session: FrameworkSession, inner: ModelProvider | None = None):
        self.session = session
        self.inner = inner or MultiProvider()

    def get_model(self, model_name: str | None) -> Model:
        return JournalModel(self.inner.get_model(model_name), self.session)


def _tool(tool: FunctionTool, session: FrameworkSession, effects: dict[str, str]) -> FunctionTool:
    """The tool with its calls journaled by effect class. The SDK's `needs_approval` becomes
    an everruns approval (the run parks durably); an agent used as a tool is one call."""
    effect = effects.get(tool.name) or declared_effect(tool) or "at_most_once"
    original = tool.on_invoke_tool
    needs = tool.needs_approval
    nested = tool._is_agent_tool

    async def on_invoke_tool(ctx: Any, raw: str) -> Any:
        arguments = _arguments(raw)
        ask = (
            needs
            if isinstance(needs, bool)
            else bool(await needs(ctx, arguments, ctx.tool_call_id))
        )
        if nested and ctx.run_config is not None:  # its run is inside this one call
            ctx.run_config = dataclasses.replace(ctx.run_config, model_provider=MultiProvider())

        async def run(_ctx: ToolContext) -> ToolResult:
            value = await original(ctx, raw)
            return ToolResult(value=to_jsonable_python(value, fallback=str))

        result = await session.tool_call(
            ctx.tool_call_id, tool.name, arguments, effect, run, approval=ask
        )
        return result.value if result.kind == "ok" else result.error

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool, needs_approval=False)


def _arguments(raw: str) -> dict[str, Any]:
    """The call's arguments as journaled (malformed JSON is journaled as it came; the
    tool's own validation answers the model)."""
    try:
        parsed = json.loads(raw or "{}")
    except ValueError:
        return {"raw": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


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


def durable_copy(
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
        model = JournalModel(model, session)
    tools = [_tool(t, session, effects) if isinstance(t, FunctionTool) else t for t in agent.tools]
    copy = agent.clone(model=model, tools=tools, handoffs=[])
    copies[id(agent)] = copy
    if agent.mcp_servers:
        _journal_mcp_tools(copy, session, effects)

    def durable(target: Agent[Any]) -> Agent[Any]:
        return durable_copy(target, session, effects, copies)

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
