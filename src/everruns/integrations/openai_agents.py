"""OpenAI Agents SDK agents, run durably on everruns.

    from everruns.integrations.openai_agents import EverrunsRunner
    result = await EverrunsRunner.run(agent, "...")     # a drop-in for Runner.run
    streamed = EverrunsRunner.run_streamed(agent, "...")  # ... and for Runner.run_streamed

The agent graph is copied so that every model request and tool call of every agent is
journaled (and served from the journal when the run is resumed): see
`openai_agents_graph`. Handoffs are the SDK's own: the transfer is a tool call in a
journaled model answer, replayed like any other. The loop always runs streamed, so text
deltas reach `everruns watch`, the API's live feed and the UI while a model answers, and
an in-process `run_streamed` caller gets the SDK's own stream events.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import Agent, RunConfig, Runner
from pydantic_core import to_json

from everruns.engine import framework
from everruns.engine.framework import FrameworkSession
from everruns.integrations import EverrunsRunError, everruns_tool, run_in_process
from everruns.integrations.deps import Factory, build, journaled
from everruns.integrations.mcp_servers import connected
from everruns.integrations.openai_agents_graph import JournalProvider, durable_copy
from everruns.spec import AgentSpec, FrameworkAgent, Limits

__all__ = [
    "DurableAgent",
    "DurableRunStreaming",
    "EverrunsRunError",
    "EverrunsRunner",
    "everruns_tool",
    "execute",
]


@dataclasses.dataclass
class DurableAgent:
    """An SDK agent with what the worker that executes its runs needs besides the agent:
    tool `effects` (name -> effect class), `context_type` (a pydantic-validatable type: the
    run's journaled JSON context is validated back as it, so a dataclass context comes back
    as that dataclass) and `context_factory` (`fn(run_id, value)`, sync or async: builds a
    context that cannot be JSON, e.g. a client, in the executing worker from the journaled
    JSON value). A by-reference spec's `agent.python` may name one in place of the Agent;
    `EverrunsRunner.run` takes one too."""

    agent: Agent[Any]
    effects: dict[str, str] = dataclasses.field(default_factory=dict)
    context_type: Any = None
    context_factory: Factory | None = None


def _target(target: Any) -> DurableAgent:
    if isinstance(target, DurableAgent):
        return target
    if not isinstance(target, Agent):
        raise ValueError(
            f"agent.python: {type(target).__name__} is not an OpenAI Agents SDK Agent "
            "(agents.Agent or DurableAgent)"
        )
    return DurableAgent(target)


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
    found = _target(target)
    assert session.spec.agent is not None
    context = await build(session, found.context_type, found.context_factory, "context")
    copies: dict[int, Agent[Any]] = {}
    effects = {**session.spec.agent.effects, **found.effects}
    durable = durable_copy(found.agent, session, effects, copies)
    config = RunConfig(model_provider=JournalProvider(session), tracing_disabled=True)
    history: list[Any] = []
    result: Any = None
    servers = [s for copy in copies.values() for s in copy.mcp_servers]
    async with connected(servers):
        for prompt in session.inputs:
            user: Any = {"role": "user", "content": prompt}
            result = Runner.run_streamed(
                durable, [*history, user], context=context, run_config=config
            )
            await _stream(result, session)
            history = result.to_input_list()
            durable = result.last_agent  # the conversation goes on with the agent that answered
    session.output = result
    if result is None:
        return ""
    output = result.final_output
    return output if isinstance(output, str) else to_json(output, fallback=str).decode()


# What Runner.run takes and EverrunsRunner does not, and why: a resumed run is rebuilt on
# any worker from the spec alone, so per-call objects cannot follow it.
_REFUSED = {
    "session": "the run's journal is its memory: continue a conversation by sending the run "
    "another message (`everruns send RUN_ID ...`, or EverrunsRunner.run with the same "
    "run_id after the message), not through an SDK Session",
    "max_turns": "the everruns spec's limits bound the run (limits={'max_steps': ...})",
    "hooks": "hooks would run again on replay; watch the run's journal instead",
    "run_config": "the durable run builds its own RunConfig (models by name use the default "
    "provider)",
    "error_handlers": "a resumed run is rebuilt on any worker from the spec alone",
    "previous_response_id": "server-side conversation state is not replayable",
    "auto_previous_response_id": "server-side conversation state is not replayable",
    "conversation_id": "server-side conversation state is not replayable",
}


def _refuse(input: Any, kwargs: dict[str, Any]) -> None:
    if not isinstance(input, str):
        raise TypeError(
            "EverrunsRunner takes the user's message as a string (the run's input); "
            "continue a conversation by sending the run another message"
        )
    for name in kwargs:
        why = _REFUSED.get(name, "it is not an argument of Runner.run")
        raise TypeError(f"EverrunsRunner does not support {name}=: {why}")


def _spec(
    starting_agent: Agent[Any] | DurableAgent,
    ref: str | None,
    effects: dict[str, str] | None,
    approvals: list[str] | None,
    limits: Limits | dict[str, Any] | None,
    context: Any = None,
    context_type: Any = None,
    context_factory: Factory | None = None,
) -> tuple[AgentSpec, Any]:
    """The run's spec and its context as journaled (JSON), checked the way the executing
    worker will rebuild it."""
    given = _target(starting_agent)
    target = DurableAgent(
        given.agent,
        {**given.effects, **(effects or {})},
        context_type or given.context_type,
        context_factory or given.context_factory,
    )
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in target.agent.name)
    local = f"everruns.local:openai_agents.{name}"
    if ref is None:
        framework.register(local, target)
    elif context is not None or context_type is not None or context_factory is not None:
        target = _imported(ref, target)
    rebuild = None if target.context_factory else target.context_type
    hint = (
        "Pass a context that is JSON (the factory's input) and build the live object in "
        "context_factory."
        if target.context_factory
        else "Give a context_factory=fn(run_id, value) that builds it in the executing "
        "worker, and pass what it needs (JSON) as context."
    )
    data = journaled(context, "context", rebuild, hint)
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
    return spec, data


def _imported(ref: str, wanted: DurableAgent) -> DurableAgent:
    """What workers import for `ref`; the caller's context_type / context_factory must be
    its own (a worker in another process would not know them otherwise)."""
    found = _target(framework.resolve(ref))
    for field in ("context_type", "context_factory"):
        mine = getattr(wanted, field)
        if mine is not None and mine is not getattr(found, field):
            raise TypeError(
                f"{field}: ref {ref!r} names an agent without it, so a worker that imports it "
                f"could not rebuild the context: point ref at a DurableAgent(agent, {field}=...)"
            )
    return found


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
        starting_agent: Agent[Any] | DurableAgent,
        input: str,
        *,
        run_id: str | None = None,
        context: Any = None,
        context_type: Any = None,
        context_factory: Factory | None = None,
        ref: str | None = None,
        effects: dict[str, str] | None = None,
        approvals: list[str] | None = None,
        limits: Limits | dict[str, Any] | None = None,
        db: str | None = None,
        timeout: float | None = None,
        **unsupported: Any,
    ) -> Any:
        """`context`: journaled as JSON with the run; each execution gets it rebuilt (as
        `context_type`, by `context_factory`, else as the JSON value); an existing run
        keeps its own (another context: ValueError)."""
        _refuse(input, unsupported)
        spec, data = _spec(
            starting_agent, ref, effects, approvals, limits, context, context_type, context_factory
        )
        return await run_in_process(
            spec,
            input,
            run_id=run_id,
            db=db,
            timeout=timeout,
            execute=execute,
            deps=data,
            what="context",
        )

    @classmethod
    def run_sync(cls, starting_agent: Agent[Any] | DurableAgent, input: str, **kwargs: Any) -> Any:
        """`run`, blocking (not from inside a running event loop), like `Runner.run_sync`."""
        return asyncio.run(cls.run(starting_agent, input, **kwargs))

    @classmethod
    def run_streamed(
        cls,
        starting_agent: Agent[Any] | DurableAgent,
        input: str,
        *,
        run_id: str | None = None,
        context: Any = None,
        context_type: Any = None,
        context_factory: Factory | None = None,
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
        _refuse(input, unsupported)
        from everruns.store.records import new_id

        spec, data = _spec(
            starting_agent, ref, effects, approvals, limits, context, context_type, context_factory
        )
        rid = run_id or new_id()
        return DurableRunStreaming(
            rid,
            input,
            lambda: run_in_process(
                spec,
                input,
                run_id=rid,
                db=db,
                timeout=timeout,
                execute=execute,
                deps=data,
                what="context",
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
        self._events.put_nowait(self._end)  # a later stream_events() ends at once
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
