"""Pydantic AI agents, run durably on everruns.

    from everruns.integrations.pydantic_ai import EverrunsAgent
    durable = EverrunsAgent(agent, ref="myapp.agents:agent")
    result = await durable.run("...")        # an everruns run; result.output as usual

Built on Pydantic AI's public capability hooks: `wrap_model_request` and
`wrap_tool_execute` of a capability added to each run send every model request and
tool call through `everruns.engine.framework.FrameworkSession`, which journals them
(or serves them from the journal when the run is resumed). The model's response is
journaled in Pydantic AI's own serialized form, so a replayed run sees exactly the
objects it saw; a tool's return value is journaled as JSON, and the agent gets that
JSON back (live too, so the first execution and a replay agree).

Live requests are streamed (`get_wrapper_model`: the model's `request` consumes its
`request_stream`), their text deltas published to everruns' live stream; an
in-process caller that streams (`run_stream_events`, `event_stream_handler`) gets
Pydantic AI's own events of the execution (`framework.listen`). Tools declared with
`requires_approval=True` park the run for a human (`handle_deferred_tool_calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from pydantic_ai.agent import AbstractAgent, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolRetryError
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.tools import DeferredToolResults, ToolDenied
from pydantic_ai.toolsets import FunctionToolset
from pydantic_core import to_json, to_jsonable_python

from everruns.engine import framework
from everruns.engine.framework import FrameworkSession, ModelAnswer, ToolResult
from everruns.integrations import EverrunsRunError, declared_effect, everruns_tool, run_in_process
from everruns.integrations.deps import Factory, build, journaled
from everruns.integrations.pydantic_ai_streaming import (
    LiveModel,
    NodeEvents,
    RunEvents,
    events_of,
    forward,
)
from everruns.spec import AgentSpec, FrameworkAgent, Limits
from everruns.store.records import new_id
from everruns.tools.base import ToolContext

__all__ = [
    "EverrunsAgent",
    "EverrunsRunError",
    "NodeEvents",
    "RunEvents",
    "everruns_tool",
    "execute",
]

# Keys of Pydantic AI's serialized messages that change between executions of the
# same request (clocks, generated ids): left out of the request's digest.
VOLATILE = frozenset(
    {
        "timestamp",
        "request_timestamp",
        "duration",
        "run_id",
        "conversation_id",
        "model_id",
        "provider_response_id",
    }
)


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _answer(response: ModelResponse, label: str) -> ModelAnswer:
    text = "".join(p.content for p in response.parts if isinstance(p, TextPart))
    calls = [
        {"id": p.tool_call_id, "name": p.tool_name, "arguments": p.args_as_dict()}
        for p in response.parts
        if isinstance(p, ToolCallPart)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    usage = response.usage
    return ModelAnswer(
        message=message,
        usage={
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cache_read_tokens,
        },
        model=label,
        payload=ModelMessagesTypeAdapter.dump_python([response], mode="json")[0],
        stop_reason=response.finish_reason,
    )


class _Journal(AbstractCapability[Any]):
    """The capability each framework run gets: model requests and tool executions go
    through the session (journaled, or served from the journal)."""

    def __init__(self, session: FrameworkSession, effects: dict[str, str]):
        self.session = session
        self.effects = effects
        self.live = False  # a live model request is in flight (its stream events are new)

    def get_wrapper_model(self, model: Model) -> Model | None:
        return LiveModel(model, self.session)

    async def wrap_model_request(self, ctx: Any, *, request_context: Any, handler: Any) -> Any:
        messages = _stable(
            ModelMessagesTypeAdapter.dump_python(request_context.messages, mode="json")
        )
        params = request_context.model_request_parameters
        tools = [t.name for t in [*params.function_tools, *params.output_tools]]
        model = request_context.model
        label = f"{model.system}:{model.model_name}"

        async def call() -> ModelAnswer:
            self.live = True
            try:
                return _answer(await handler(request_context), label)
            finally:
                self.live = False

        payload = await self.session.model_request(messages, tools, label, call)
        response: ModelResponse = ModelMessagesTypeAdapter.validate_python([payload])[0]  # type: ignore[assignment]
        return response

    async def wrap_tool_execute(
        self, ctx: Any, *, call: ToolCallPart, tool_def: Any, args: Any, handler: Any
    ) -> Any:
        metadata = tool_def.metadata or {}
        effect = (
            self.effects.get(call.tool_name) or metadata.get("everruns_effect") or "at_most_once"
        )

        live_retry: list[ToolRetryError] = []

        async def run(_ctx: ToolContext) -> ToolResult:
            try:
                value = await handler(args)
            except ToolRetryError as exc:  # the tool raised ModelRetry (already counted)
                live_retry.append(exc)
                content = exc.tool_retry.content
                text = content if isinstance(content, str) else to_json(content).decode()
                return ToolResult(kind="retry", error=text)
            except (ApprovalRequired, CallDeferred) as exc:
                raise RuntimeError(
                    f"tool {call.tool_name!r} raised {type(exc).__name__}: deferring a call from "
                    "inside the tool is not durable on everruns; declare the tool with "
                    "requires_approval=True or list it under approvals"
                ) from None
            return ToolResult(value=to_jsonable_python(value, fallback=str))

        result = await self.session.tool_call(
            call.tool_call_id, call.tool_name, call.args_as_dict(), effect, run
        )
        if result.kind == "ok":
            return result.value
        if result.kind == "retry":
            if live_retry:
                raise live_retry[0]
            raise ModelRetry(result.error or "try again")  # replayed: counted as live was
        if result.kind == "error":
            raise RuntimeError(result.error)
        return result.error  # interrupted / denied: the model is told

    async def handle_deferred_tool_calls(self, ctx: Any, *, requests: Any) -> Any:
        """Tools declared with `requires_approval=True`: a human decides through everruns
        (`everruns approve/deny`); the run parks durably until then. Other deferred calls
        (external tools) are left to the agent."""
        if not requests.approvals:
            return None
        asked = [(c.tool_call_id, c.tool_name, c.args_as_dict()) for c in requests.approvals]
        decided = await self.session.approvals(asked)  # raises Parked while one is undecided
        results = DeferredToolResults()
        for call_id, denial in decided.items():
            results.approvals[call_id] = True if denial is None else ToolDenied(denial.error or "")
        return results


def _inner(target: Any) -> tuple[AbstractAgent[Any, Any], dict[str, str], Factory | None]:
    """The Pydantic AI agent a spec names, its wrapper's effects and deps factory."""
    effects: dict[str, str] = {}
    factory: Factory | None = None
    if isinstance(target, EverrunsAgent):
        effects.update(target.effects)
        factory = target.deps_factory
        target = target.wrapped
    if not isinstance(target, AbstractAgent):
        raise ValueError(
            f"agent.python: {type(target).__name__} is not a Pydantic AI agent "
            "(pydantic_ai.Agent or EverrunsAgent)"
        )
    return target, effects, factory


def tool_effects(agent: AbstractAgent[Any, Any]) -> dict[str, str]:
    """Effects declared with `@everruns_tool(effect=...)` on the agent's function tools."""
    found: dict[str, str] = {}
    for toolset in agent.toolsets:
        if isinstance(toolset, FunctionToolset):
            for name, tool in toolset.tools.items():
                effect = declared_effect(tool.function)
                if effect is not None:
                    found[name] = effect
    return found


async def execute(target: Any, session: FrameworkSession) -> str:
    """The loop of a framework run (called by the worker): one agent run per user
    message, each continuing the conversation of the previous ones."""
    agent, wrapper_effects, factory = _inner(target)
    assert session.spec.agent is not None
    effects = {**tool_effects(agent), **session.spec.agent.effects, **wrapper_effects}
    deps = await build(session, agent.deps_type, factory, "deps")
    journal = _Journal(session, effects)
    streamed = forward(session, lambda: journal.live) if session.listener is not None else None
    history: list[Any] | None = None
    result: Any = None
    for turn, prompt in enumerate(session.inputs):
        run_id = session.run_id if turn == 0 else f"{session.run_id}.{turn}"
        result = await agent.run(
            prompt,
            message_history=history,
            run_id=run_id,
            conversation_id=session.run_id,
            deps=deps,
            capabilities=[journal],
            event_stream_handler=streamed,
        )
        history = result.all_messages()
    session.output = result
    if result is None:
        return ""
    output = result.output
    return output if isinstance(output, str) else to_json(output).decode()


class EverrunsAgent(WrapperAgent[Any, Any]):
    """A Pydantic AI agent whose runs are everruns runs (journaled, resumable, budgeted).

    `ref`: `module:attribute` where workers can import the agent (needed for a run to be
    resumed by another process); without it the agent is registered in this process
    only. `effects`: effect class per tool name (see `everruns_tool`). `approvals`:
    tools that wait durably for a human. `limits`: everruns limits (max_steps,
    max_cost_usd, ...). `db`: database URL (default: EVERRUNS_DATABASE_URL or the CLI's).
    `deps_factory`: `fn(run_id, value)` (sync or async) building the run's deps in the
    worker that executes it, from the run's journaled JSON `deps` (or the spec's, or
    None): for deps that cannot be JSON (connections, clients). Without it, `deps` are
    validated back as the agent's `deps_type`.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[Any, Any],
        *,
        name: str | None = None,
        ref: str | None = None,
        effects: dict[str, str] | None = None,
        approvals: list[str] | None = None,
        limits: Limits | dict[str, Any] | None = None,
        db: str | None = None,
        deps_factory: Factory | None = None,
    ):
        super().__init__(wrapped)
        self.agent_name = name or wrapped.name or "pydantic-ai-agent"
        self.ref = ref or f"everruns.local:{self.agent_name}"
        self.effects = dict(effects or {})
        self.approvals = list(approvals or [])
        self.limits = Limits.model_validate(limits or {})
        self.db = db
        self.deps_factory = deps_factory
        self._explicit_ref = ref is not None
        if ref is None:
            framework.register(self.ref, self)

    def spec(self) -> AgentSpec:
        """The everruns spec of this agent's runs."""
        return AgentSpec.model_validate(
            {
                "name": self.agent_name,
                "agent": FrameworkAgent(
                    python=self.ref,
                    framework="pydantic_ai",
                    effects=self.effects,  # type: ignore[arg-type]
                ),
                "limits": self.limits,
                "approvals": {"require_for": self.approvals},
            }
        )

    async def run(  # type: ignore[override]
        self,
        user_prompt: str | None = None,
        *,
        run_id: str | None = None,
        deps: Any = None,
        timeout: float | None = None,
        event_stream_handler: Callable[[Any, AsyncIterable[Any]], Awaitable[None]] | None = None,
        **unsupported: Any,
    ) -> Any:
        """Execute the agent as an everruns run in this process; returns Pydantic AI's
        result. `run_id` makes it idempotent: an existing run is resumed (replayed).
        `deps`: journaled as JSON with the run; each execution gets them rebuilt (as the
        agent's `deps_type`, or by `deps_factory`); an existing run keeps its own (other
        deps: ValueError). `event_stream_handler` gets Pydantic AI's events of this
        process's execution, node by node, as the wrapped agent's handler would (a resumed
        run's replayed steps included, rebuilt from the journal)."""
        _refuse(unsupported)
        data = self._journaled(deps)
        rid = run_id or new_id()
        if event_stream_handler is not None:
            handler = event_stream_handler

            async def listener(item: Any) -> None:
                if isinstance(item, NodeEvents):
                    await handler(item.ctx, item.events)

            framework.listen(rid, listener)
        try:
            return await run_in_process(
                self.spec(),
                user_prompt,
                run_id=rid,
                db=self.db,
                timeout=timeout,
                execute=execute,
                deps=data,
            )
        finally:
            if event_stream_handler is not None:
                framework.listen(rid, None)

    def _journaled(self, deps: Any) -> Any:
        """`deps` as journaled (JSON), checked the way the executing worker will rebuild
        them: the factory of the agent `ref` names (which workers import), else the
        agent's deps_type."""
        factory = self.deps_factory
        if deps is None and factory is None:
            return None
        if self._explicit_ref:
            target = framework.resolve(self.ref)
            found = target.deps_factory if isinstance(target, EverrunsAgent) else None
            if factory is not None and found is not factory:
                raise TypeError(
                    f"deps_factory: ref {self.ref!r} names an agent without this factory, so a "
                    "worker that imports it could not build the deps: point ref at this "
                    "EverrunsAgent (a module attribute)"
                )
            factory = found
        hint = (
            "Pass deps that are JSON (the factory's input) and build the live object in "
            "deps_factory."
            if factory is not None
            else "Give EverrunsAgent a deps_factory=fn(run_id, value) that builds it in the "
            "executing worker, and pass what it needs (JSON) as deps."
        )
        return journaled(deps, "deps", None if factory else self.wrapped.deps_type, hint)

    def run_sync(  # type: ignore[override]
        self, user_prompt: str | None = None, *, run_id: str | None = None, **kwargs: Any
    ) -> Any:
        return asyncio.run(self.run(user_prompt, run_id=run_id, **kwargs))

    def run_stream_events(  # type: ignore[override]
        self,
        user_prompt: str | None = None,
        *,
        run_id: str | None = None,
        deps: Any = None,
        timeout: float | None = None,
        **unsupported: Any,
    ) -> contextlib.AbstractAsyncContextManager[RunEvents]:
        """`async with durable.run_stream_events("...") as events: async for event in
        events:` Pydantic AI's events of the durable run as they happen, then one
        `AgentRunResultEvent`. Leaving early stops waiting, not the run: it stays durable
        (resumed by any worker, or by calling again with the same `run_id`)."""
        _refuse(unsupported)
        self._journaled(deps)  # refused here, not from inside the stream

        def start(handler: Any) -> Awaitable[Any]:
            return self.run(
                user_prompt, run_id=run_id, deps=deps, timeout=timeout, event_stream_handler=handler
            )

        return events_of(start)

    # Step-by-step iteration and run_stream's early end at the first output would hand the
    # agent's loop to the caller; everruns drives that loop (and replays it after a crash).
    def iter(self, *args: Any, **kwargs: Any) -> Any:
        raise _not_durable("iter")

    def run_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise _not_durable("run_stream")

    def run_stream_sync(self, *args: Any, **kwargs: Any) -> Any:
        raise _not_durable("run_stream_sync")


def _not_durable(method: str) -> NotImplementedError:
    return NotImplementedError(
        f"EverrunsAgent.{method} cannot be durable: everruns drives the agent's loop (and "
        "replays it after a crash), so it cannot hand the loop to the caller. Use "
        "`async with durable.run_stream_events(...) as events` (every event, live) or "
        "`await durable.run(..., event_stream_handler=...)`; see docs/integrations/pydantic-ai.md"
    )


# Arguments of Pydantic AI's run() a durable run cannot honour yet (all must be unset).
def _refuse(kwargs: dict[str, Any]) -> None:
    given = sorted(k for k, v in kwargs.items() if v is not None and k != "infer_name")
    if given:
        raise TypeError(
            f"EverrunsAgent.run does not support {', '.join(given)} yet "
            "(docs/integrations/pydantic-ai.md lists what is covered)"
        )
