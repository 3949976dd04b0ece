"""OpenAI Agents SDK agents, run durably on everruns.

    from everruns.integrations.openai_agents import EverrunsRunner
    result = await EverrunsRunner.run(agent, "...")     # a drop-in for Runner.run

The agent graph (the agent and every agent it can hand off to) is copied with each
agent's model wrapped in a `Model` whose `get_response` goes through
`everruns.engine.framework.FrameworkSession`, and each `FunctionTool`'s `on_invoke_tool`
wrapped the same way, so every model request and tool call of every agent is journaled
(and served from the journal when the run is resumed). Handoffs are the SDK's own: the
transfer is a tool call in a journaled model answer, replayed like any other.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner
from agents.items import ModelResponse, TResponseOutputItem
from agents.models.interface import Model, ModelProvider
from agents.models.multi_provider import MultiProvider
from agents.usage import Usage
from pydantic import TypeAdapter
from pydantic_core import to_json, to_jsonable_python

from everruns.engine import framework
from everruns.engine.framework import FrameworkSession, ModelAnswer, ToolResult
from everruns.integrations import declared_effect, everruns_tool, run_in_process
from everruns.spec import AgentSpec, FrameworkAgent, Limits
from everruns.tools.base import ToolContext

__all__ = ["EverrunsRunner", "everruns_tool", "execute"]

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


class _JournalModel(Model):
    """A model whose answers are journaled (or served from the journal)."""

    def __init__(self, inner: Model, session: FrameworkSession):
        self.inner = inner
        self.session = session

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
        names = [t.name for t in tools] + [h.tool_name for h in handoffs]
        items = input if isinstance(input, list) else [{"role": "user", "content": input}]
        messages = [{"system": system_instructions}, *to_jsonable_python(items, fallback=str)]
        label = _label(self.inner)

        async def call() -> ModelAnswer:
            response = await self.inner.get_response(system_instructions, input, *args, **kw)
            return _answer(response, label)

        payload = await self.session.model_request(messages, names, label, call)
        return _response(payload)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "EverrunsRunner does not stream yet: use EverrunsRunner.run "
            "(see docs/integrations/openai-agents.md)"
        )


class _JournalProvider(ModelProvider):
    """Models named by string (agent.model = "gpt-4.1") get the same wrapper."""

    def __init__(self, session: FrameworkSession, inner: ModelProvider | None = None):
        self.session = session
        self.inner = inner or MultiProvider()

    def get_model(self, model_name: str | None) -> Model:
        return _JournalModel(self.inner.get_model(model_name), self.session)


def _tool(tool: FunctionTool, session: FrameworkSession, effects: dict[str, str]) -> FunctionTool:
    effect = effects.get(tool.name) or declared_effect(tool) or "at_most_once"
    original = tool.on_invoke_tool

    async def on_invoke_tool(ctx: Any, raw: str) -> Any:
        async def run(_ctx: ToolContext) -> ToolResult:
            value = await original(ctx, raw)
            return ToolResult(value=to_jsonable_python(value, fallback=str))

        arguments = json.loads(raw or "{}")
        result = await session.tool_call(ctx.tool_call_id, tool.name, arguments, effect, run)
        return result.value if result.kind == "ok" else result.error

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


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
    handoffs: list[Any] = []
    for target in agent.handoffs:
        if isinstance(target, Handoff):
            raise ValueError(
                f"agent.python: agent {agent.name!r} hands off through a Handoff object; "
                "EverrunsRunner supports handoffs to Agent objects (handoffs=[other_agent])"
            )
        handoffs.append(_durable(target, session, effects, copies))
    copy.handoffs = handoffs
    return copy


def _target(target: Any) -> tuple[Agent[Any], dict[str, str]]:
    if isinstance(target, _Registered):
        return target.agent, target.effects
    if not isinstance(target, Agent):
        raise ValueError(f"agent.python: {type(target).__name__} is not an OpenAI Agents SDK Agent")
    return target, {}


async def execute(target: Any, session: FrameworkSession) -> str:
    """The loop of a framework run (called by the worker): one Runner.run per user message,
    each continuing the conversation of the previous ones."""
    agent, extra = _target(target)
    assert session.spec.agent is not None
    durable = _durable(agent, session, {**session.spec.agent.effects, **extra}, {})
    config = RunConfig(model_provider=_JournalProvider(session), tracing_disabled=True)
    history: list[Any] = []
    result: Any = None
    for prompt in session.inputs:
        result = await Runner.run(
            durable, [*history, {"role": "user", "content": prompt}], run_config=config
        )
        history = result.to_input_list()
    session.output = result
    if result is None:
        return ""
    output = result.final_output
    return output if isinstance(output, str) else to_json(output, fallback=str).decode()


@dataclasses.dataclass
class _Registered:
    agent: Agent[Any]
    effects: dict[str, str]


class EverrunsRunner:
    """`await EverrunsRunner.run(agent, input)` in place of `Runner.run`: the run is an
    everruns run (journaled, resumable with the same `run_id`, budgeted)."""

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
    ) -> Any:
        """`ref`: `module:attribute` where workers can import the agent (so any worker can
        resume the run); without it the agent is registered in this process only."""
        name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in starting_agent.name)
        local = f"everruns.local:openai_agents.{name}"
        if ref is None:
            framework.register(local, _Registered(starting_agent, dict(effects or {})))
        spec = AgentSpec.model_validate(
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
        return await run_in_process(
            spec, input, run_id=run_id, db=db, timeout=timeout, execute=execute
        )
