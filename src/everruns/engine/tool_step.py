"""The tool step: run the calls of one answer (`act`) and journal each result.

Each call is planned by `decide` (run, interrupt, deny, request approval, wake); a
call that runs journals `tool.started` first, so an `at_most_once` tool's start is
durable before it runs. Workspace changes are journaled with the result of the call
that made them. The last open call's result is deferred to the next atom's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import UTC, datetime
from typing import Any

from everruns.core.decide import Act, CallPlan
from everruns.core.events import INTERRUPTED_MESSAGE, SKIPPED_MESSAGE, EventType
from everruns.core.state import CallState
from everruns.engine.runlog import RunLog
from everruns.engine.subagents import Subagents
from everruns.engine.tool_limits import RateLimiter, give_up_message, retry_delay
from everruns.errors import RetryLater
from everruns.providers.base import INVALID_ARGUMENTS
from everruns.store import Store
from everruns.tools.base import (
    SleepRequest,
    SpawnRequest,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    WaitRequest,
    render_output,
)
from everruns.tools.workspace import Workspace


class ToolStep:
    """Tool calls of one run. `tools` is read at each call (MCP tools join it at start)."""

    def __init__(
        self,
        log: RunLog,
        store: Store,
        tools: dict[str, Tool],
        workspace: Workspace | None,
        subagents: Subagents,
        *,
        agent: str,
        max_parallel: int,
        max_sleep: float = 5.0,
    ):
        self.log = log
        self.store = store
        self.tools = tools
        self.workspace = workspace
        self.subagents = subagents
        self.agent = agent
        self.max_parallel = max_parallel
        self._ws_lock = asyncio.Lock()
        self.limiter = RateLimiter(store, max_sleep)

    async def act(self, atom: Act) -> None:
        limit = asyncio.Semaphore(self.max_parallel)

        async def one(plan: CallPlan) -> None:
            async with limit:
                await self.call_tool(plan)

        await asyncio.gather(*(one(plan) for plan in atom.plans))

    async def call_tool(self, plan: CallPlan) -> None:
        call = plan.call
        base = {"call_id": call.id, "name": call.name}
        if plan.action == "interrupt":
            await self.log.append(
                EventType.TOOL_FAILED, {**base, "error": INTERRUPTED_MESSAGE, "interrupted": True}
            )
            return
        if plan.action == "skip":  # a steer redirected the turn before this call started
            await self._resolve_call(
                EventType.TOOL_FAILED, {**base, "error": SKIPPED_MESSAGE, "skipped": True}
            )
            return
        if plan.action == "deny":
            reason = call.denial or "no reason given"
            await self.log.append(
                EventType.TOOL_FAILED,
                {**base, "error": f"denied by a human: {reason}", "denied": True},
            )
            return
        if plan.action == "request_approval":
            await self.log.append(
                EventType.APPROVAL_REQUESTED, {**base, "arguments": call.arguments}
            )
            return
        if plan.action == "wake":
            await self._resolve_call(
                EventType.TOOL_COMPLETED, {**base, "output": self._woken(call)}
            )
            return
        tool = self.tools.get(call.name)
        problem = None
        if tool is None:
            problem = (
                f"unknown tool {call.name!r}; available: {', '.join(sorted(self.tools)) or 'none'}"
            )
        elif INVALID_ARGUMENTS in call.arguments:
            problem = f"the arguments are not valid JSON: {call.arguments[INVALID_ARGUMENTS]}"
        if tool is None or problem is not None:
            await self._resolve_call(EventType.TOOL_FAILED, {**base, "error": problem})
            return
        key = f"{self.log.run_id}:{call.id}"
        wait = await self.limiter.acquire(tool, key)
        if wait:
            await self._retry(base, plan.attempt - 1, "rate_limited", wait)
            return
        try:
            await self._run_call(tool, plan, base, key)
        finally:
            await self.limiter.release(tool, key)

    async def _run_call(self, tool: Tool, plan: CallPlan, base: dict[str, Any], key: str) -> None:
        call = plan.call
        started = await self.log.append(
            EventType.TOOL_STARTED,
            {**base, "attempt": plan.attempt, "effect": tool.effect, "idempotency_key": key},
        )
        progress: dict[str, Any] = {}
        published = [0.0]
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def publish(event: dict[str, Any]) -> None:
            self.log.publish_ephemeral("tool.progress", event)

        def on_progress(value: dict[str, Any]) -> None:
            progress.clear()
            progress.update(value)
            now = time.monotonic()  # at most ten live ticks a second, and the last one
            if now - published[0] >= 0.1 or value.get("done") == value.get("total"):
                published[0] = now
                if threading.get_ident() == loop_thread:
                    publish({**base, **value})
                else:  # a plain function runs in a thread; the broker's queues are the loop's
                    with contextlib.suppress(RuntimeError):  # the loop is gone (timed out)
                        loop.call_soon_threadsafe(publish, {**base, **value})

        # Calls that touch the workspace run one at a time, so the file changes journaled
        # with a call's result are exactly that call's (not a parallel call's half-done writes).
        uses_ws = tool.uses_workspace and self.workspace is not None
        async with self._ws_lock if uses_ws else contextlib.nullcontext():
            ctx = ToolContext(
                run_id=self.log.run_id,
                tool_call_id=call.id,
                idempotency_key=key,
                attempt=plan.attempt,
                workspace=await self.workspace.materialize()
                if uses_ws and self.workspace
                else None,
                notes=tuple(self.log.state.notes),
                agent=self.agent,
                store=self.store,
                on_progress=on_progress,
                trace=self.log.trace_headers(started),
            )
            try:
                if tool.timeout:
                    output = await asyncio.wait_for(tool.invoke(call.arguments, ctx), tool.timeout)
                else:
                    output = await tool.invoke(call.arguments, ctx)
            except TimeoutError:
                error = f"timed out after {tool.timeout:g}s" if tool.timeout else "TimeoutError"
            except (ToolError, RetryLater) as exc:
                error = str(exc)
                delay = retry_delay(tool, plan.attempt, exc)
                if delay is not None:
                    changes = await self._changes() if uses_ws else {}
                    data = {**base, **changes, **_latest(progress)}
                    await self._retry(data, plan.attempt, error, delay)
                    return
                error = give_up_message(tool, plan.attempt, error)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                await self._tool_result(
                    tool, {**base, **_latest(progress)}, output, uses_ws, ctx.trace
                )
                return
            changes = await self._changes() if uses_ws else {}
            await self._resolve_call(
                EventType.TOOL_FAILED, {**base, "error": error, **changes, **_latest(progress)}
            )

    async def _retry(self, base: dict[str, Any], attempt: int, reason: str, delay: float) -> None:
        """Journal that the call runs again after `delay` seconds (decide parks the run)."""
        await self.log.append(
            EventType.TOOL_RETRYING,
            {**base, "attempt": attempt, "reason": reason, "retry_at": time.time() + delay},
        )

    async def _changes(self) -> dict[str, Any]:
        """Workspace changes since the last journaled result, to journal with this one."""
        files = await self.workspace.commit() if self.workspace else {}
        return {"files": files} if files else {}

    async def _tool_result(
        self,
        tool: Tool,
        base: dict[str, Any],
        output: Any,
        uses_ws: bool = False,
        trace: dict[str, str] | None = None,
    ) -> None:
        if isinstance(output, SleepRequest):
            await self.log.append(
                EventType.TOOL_WAITING, {**base, "wake_at": output.until, "reason": output.reason}
            )
            return
        if isinstance(output, WaitRequest):
            await self._wait_for_children(base, output)
            return
        if isinstance(output, SpawnRequest):
            try:
                child = await self.subagents.spawn(base["call_id"], output, trace or {})
            except ToolError as exc:
                await self.log.append(EventType.TOOL_FAILED, {**base, "error": str(exc)})
                return
            await self.log.append(
                EventType.TOOL_COMPLETED,
                {**base, "output": render_output({"run_id": child}), "child": child},
            )
            return
        data: dict[str, Any] = {**base}
        if isinstance(output, ToolOutput):
            if output.note:
                data["note"] = output.note
            output = output.output
        data["output"] = render_output(output)
        if tool.max_output is not None and len(data["output"]) > tool.max_output:
            data["max_output"] = tool.max_output
        if uses_ws:
            data.update(await self._changes())
        await self._resolve_call(EventType.TOOL_COMPLETED, data)

    async def _wait_for_children(self, base: dict[str, Any], output: WaitRequest) -> None:
        children = self.log.state.children
        if not output.run_ids:
            output = WaitRequest(run_ids=tuple(children), mode=output.mode)
        if not output.run_ids:
            await self.log.append(
                EventType.TOOL_FAILED, {**base, "error": "this run has no sub-agents"}
            )
            return
        unknown = [r for r in output.run_ids if r not in children]
        if unknown:
            await self.log.append(
                EventType.TOOL_FAILED,
                {**base, "error": f"not sub-agents of this run: {', '.join(unknown)}"},
            )
            return
        await self.log.append(
            EventType.TOOL_WAITING,
            {
                **base,
                "wait_for": list(output.run_ids),
                "mode": output.mode,
                "reason": "sub-agents",
            },
        )

    async def _resolve_call(self, kind: str, data: dict[str, Any]) -> None:
        """Journal a call's result. The last open call of an answer is deferred: the next
        atom (an LLM call, decided at once) commits it with its own start."""
        others = any(c.status != "done" and c.id != data["call_id"] for c in self.log.state.calls)
        await self.log.append(kind, data, defer=not others)

    def _woken(self, call: CallState) -> str:
        """The result of a sleep or a wait for sub-agents that is over."""
        if call.wait_for is None:
            return f"slept until {_iso(call.wake_at)}"
        done = self.log.state.children_done
        results = [done[r] for r in call.wait_for if r in done]
        return render_output(
            [{k: r.get(k) for k in ("run_id", "status", "result", "error")} for r in results]
        )


def _latest(progress: dict[str, Any]) -> dict[str, Any]:
    """The call's latest ctx.progress(), journaled with its result (absent when none)."""
    return {"progress": dict(progress)} if progress else {}


def _iso(ts: float | None) -> str:
    if ts is None:
        return "now"
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
