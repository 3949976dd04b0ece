"""Streaming of Pydantic AI framework runs (everruns.integrations.pydantic_ai).

Two directions: a live model request's text deltas go to everruns' live stream
(`FrameworkSession.delta`: `everruns run`, the API's live feed, the UI), and an in-process
caller that streams (`run_stream_events`, `run(event_stream_handler=...)`) gets Pydantic
AI's own events of the execution (`framework.listen` / `FrameworkSession.emit`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic_ai.messages import (
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.run import AgentRunResultEvent

from everruns.engine.framework import FrameworkSession


def text_of(event: Any) -> str:
    """The text a model stream event adds to the answer ("" for any other event)."""
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return event.part.content
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    return ""


def can_stream(model: Model) -> bool:
    """Whether `model` can answer with `request_stream` (not every model implements it)."""
    if isinstance(model, FunctionModel):
        return model.stream_function is not None
    if isinstance(model, WrapperModel):
        return can_stream(model.wrapped)
    return type(model).request_stream is not Model.request_stream


class LiveModel(WrapperModel):
    """The model of a live request of a non-streamed run: it asks the wrapped model for a
    stream when it can, sends the text deltas to everruns' live stream as they come, and
    answers with the whole response (journaled once, with its usage)."""

    def __init__(self, wrapped: Model, session: FrameworkSession):
        super().__init__(wrapped)
        self.session = session

    async def request(self, messages: Any, model_settings: Any, parameters: Any) -> ModelResponse:
        if not can_stream(self.wrapped):
            return await super().request(messages, model_settings, parameters)
        async with self.wrapped.request_stream(messages, model_settings, parameters) as stream:
            async for event in stream:
                self.session.delta(text_of(event))
        return stream.get()


@dataclass
class NodeEvents:
    """What an execution hands to the in-process listener (`session.emit`): one node's
    stream of Pydantic AI events and its run context, as an `event_stream_handler` gets them."""

    ctx: Any
    events: AsyncIterable[Any]


def forward(session: FrameworkSession, live: Callable[[], bool]) -> Any:
    """The `event_stream_handler` of an execution an in-process caller streams: each node's
    events go to the caller (`session.emit`); a live request's text also to everruns'
    live stream (a replayed one is not streamed again)."""

    async def handler(ctx: Any, events: AsyncIterable[Any]) -> None:
        async def tee() -> AsyncGenerator[Any]:
            async for event in events:
                if live():
                    session.delta(text_of(event))
                yield event

        stream = tee()
        try:
            await session.emit(NodeEvents(ctx, stream))
            async for _ in stream:  # what the caller left unread
                pass
        finally:
            await stream.aclose()

    return handler


class RunEvents:
    """The events of a durable run as they happen (what `run_stream_events` yields): Pydantic
    AI's `AgentStreamEvent`s, then one `AgentRunResultEvent` with the result. The run's
    failure (EverrunsRunError) is raised where the result would be."""

    def __init__(self, start: Callable[[Any], Awaitable[Any]]):
        self._start = start
        self._send, self._receive = anyio.create_memory_object_stream[Any]()
        self._task: asyncio.Task[Any] | None = None
        self._ended = False
        self.result: Any = None

    def __aiter__(self) -> RunEvents:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._ended = True
            self.result = await self._task
            return AgentRunResultEvent(self.result)

    async def _run(self) -> Any:
        async def handler(ctx: Any, events: AsyncIterable[Any]) -> None:
            async for event in events:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._send.send(event)  # the caller stopped reading: the run goes on

        async with self._send:
            return await self._start(handler)

    async def aclose(self) -> None:
        """Stop waiting for the run (it stays durable) and release the stream."""
        self._ended = True
        self._receive.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


@contextlib.asynccontextmanager
async def events_of(start: Callable[[Any], Awaitable[Any]]) -> AsyncGenerator[RunEvents]:
    events = RunEvents(start)
    try:
        yield events
    finally:
        await events.aclose()
