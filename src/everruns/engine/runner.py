"""Execute one claimed run: load, fold, decide, execute, append — until it parks or ends.

This is the only code path: a fresh run and a run taken over after a crash go
through the same loop. Every write is fenced by the claim's epoch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from everruns import journal as j
from everruns.engine import crashpoints
from everruns.engine.backoff import backoff_delay
from everruns.engine.broker import Broker
from everruns.providers import LLMRequest, Provider, ProviderError, get_provider
from everruns.spec import AgentSpec
from everruns.store import Claim, Fenced, Store
from everruns.tools.base import Tool, ToolContext, ToolError, render_output
from everruns.tools.registry import ToolSpecError, build_tools

log = logging.getLogger("everruns.engine")


@dataclass
class RunnerOptions:
    worker_id: str
    max_crashes: int = 3
    in_memory_wait: float = 5.0  # waits up to this long keep the lease; longer ones park


class StopReason:
    """Why the worker cancelled a run's task (set before cancelling)."""

    CANCEL = "cancel"  # a user cancelled the run
    SHUTDOWN = "shutdown"  # the worker is stopping: release the lease
    LOST = "lost"  # the lease was taken over: write nothing


def _projection(state: j.State) -> dict[str, Any]:
    return {
        "steps": state.steps,
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "cost_usd": state.cost_usd,
    }


class RunRunner:
    def __init__(self, store: Store, claim: Claim, options: RunnerOptions, broker: Broker):
        self.store = store
        self.claim = claim
        self.options = options
        self.broker = broker
        self.run_id = claim.run_id
        self.epoch = claim.epoch
        self.state = j.State()
        self.stop_reason: str | None = None
        self.draining = False
        self._lock = asyncio.Lock()
        self.spec: AgentSpec | None = None
        self.tools: dict[str, Tool] = {}
        self.provider: Provider | None = None

    # ------------------------------------------------------------ journal

    async def append(self, kind: str, data: dict[str, Any], **projection: Any) -> j.Event:
        """Append one event (fenced), fold it, and publish it to live subscribers."""
        async with self._lock:
            crashpoints.hit(f"before:{kind}")
            expected = self.state.last_seq + 1
            (event,) = await self.store.append(
                self.run_id,
                self.epoch,
                [(kind, data)],
                projection={**_projection(self._preview(kind, data)), **projection},
            )
            if event.seq == expected:
                j.apply(self.state, event)
            else:  # someone else appended (a user message): refold from the truth
                self.state = j.fold(await self.store.load_events(self.run_id))
            self.broker.publish(self.run_id, {"run_id": self.run_id, **event.to_dict()})
            crashpoints.hit(f"after:{kind}")
            return event

    def _preview(self, kind: str, data: dict[str, Any]) -> j.State:
        """Usage totals including this event, for the runs-table projection."""
        if kind not in (j.LLM_COMPLETED, j.LLM_FAILED):
            return self.state
        preview = j.State(
            steps=self.state.steps + (kind == j.LLM_COMPLETED),
            input_tokens=self.state.input_tokens,
            output_tokens=self.state.output_tokens,
            cost_usd=self.state.cost_usd,
        )
        j._add_usage(preview, data.get("usage"))
        return preview

    def publish_ephemeral(self, kind: str, data: dict[str, Any]) -> None:
        self.broker.publish(
            self.run_id, {"run_id": self.run_id, "type": kind, "ephemeral": True, "data": data}
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Execute until the run parks or ends. Raises nothing but unexpected errors."""
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._on_stop()
        except Fenced:
            log.warning(
                "run %s: lease lost to another worker (epoch %s); dropped", self.run_id, self.epoch
            )

    async def _on_stop(self) -> None:
        reason = self.stop_reason
        try:
            if reason == StopReason.CANCEL:
                await asyncio.shield(self._finish_cancelled())
            elif reason == StopReason.SHUTDOWN:
                await asyncio.shield(
                    self.store.release(
                        self.run_id, self.epoch, wake_at=time.time(), status="queued"
                    )
                )
        except Fenced:
            pass

    async def _finish_cancelled(self) -> None:
        await self.append(
            j.RUN_CANCELLED,
            {"reason": "cancelled by user"},
            status="cancelled",
            wake_at=None,
            lease_owner=None,
            lease_expires_at=None,
            error={"reason": "cancelled", "message": "cancelled by user"},
        )

    async def _run(self) -> None:
        self.state = j.fold(await self.store.load_events(self.run_id))
        if self.state.terminal:
            await self.store.release(
                self.run_id, self.epoch, wake_at=None, status=self.state.status
            )
            return
        if self.claim.cancel_requested:
            await self._finish_cancelled()
            return
        self.spec = await self.store.get_agent(self.claim.agent_name, self.claim.agent_version)
        if self.claim.crashes >= self.options.max_crashes:
            await self.fail(
                "crash_loop",
                f"{self.claim.crashes} workers in a row died while executing this run without "
                f"progress (at seq {self.state.last_seq}); stopped so it cannot take the fleet down",
            )
            return
        try:
            self.tools = build_tools(self.spec)
            self.provider = get_provider(self.spec.model)
        except (ToolSpecError, ValueError) as exc:
            await self.fail("invalid_spec", str(exc))
            return
        started = await self.append(
            j.RUN_STARTED,
            {
                "worker": self.options.worker_id,
                "epoch": self.epoch,
                "takeover": self.state.starts > 0,
                "crashes": self.claim.crashes,
            },
            status="running",
        )
        await self.store.append(self.run_id, self.epoch, [], projection={"claim_seq": started.seq})
        await self._loop()

    async def _loop(self) -> None:
        assert self.spec is not None
        effects = {name: t.effect for name, t in self.tools.items()}
        while True:
            if self.draining:
                await self.store.release(
                    self.run_id, self.epoch, wake_at=time.time(), status="queued"
                )
                return
            atom = j.decide(self.state, self.spec, time.time(), effects)
            if isinstance(atom, j.Reason):
                await self.reason(atom)
            elif isinstance(atom, j.Act):
                await self.act(atom)
            elif isinstance(atom, j.Complete):
                await self.append(
                    j.RUN_COMPLETED,
                    {"result": atom.result},
                    status="completed",
                    result=atom.result,
                    wake_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
                return
            elif isinstance(atom, j.Fail):
                await self.fail(atom.reason, atom.message)
                return
            elif isinstance(atom, j.Wait):
                delay = atom.until - time.time()
                if delay <= self.options.in_memory_wait:
                    await asyncio.sleep(max(0.0, delay))
                    continue
                await self.append(j.RUN_WAITING, {"reason": atom.reason, "wake_at": atom.until})
                await self.store.release(
                    self.run_id, self.epoch, wake_at=atom.until, status="waiting"
                )
                return
            else:  # Idle: wait for a signal without holding a worker
                await self.store.release(self.run_id, self.epoch, wake_at=None, status="waiting")
                return

    async def fail(self, reason: str, message: str) -> None:
        error = {"reason": reason, "message": message}
        await self.append(
            j.RUN_FAILED,
            {"error": message, "reason": reason},
            status="failed",
            error=error,
            wake_at=None,
            lease_owner=None,
            lease_expires_at=None,
        )

    # ------------------------------------------------------------ atoms

    async def reason(self, atom: j.Reason) -> None:
        assert self.spec is not None and self.provider is not None
        model = self.spec.model
        await self.append(
            j.LLM_STARTED,
            {"attempt": atom.attempt, "step": self.state.steps + 1, "model": model.label},
        )
        request = LLMRequest(
            model=model,
            system=self.spec.system_prompt,
            messages=j.transcript(self.state),
            tools=[t.schema for t in self.tools.values()],
            step=self.state.steps,
            attempt=atom.attempt,
        )

        def on_delta(text: str) -> None:
            self.publish_ephemeral("llm.delta", {"attempt": atom.attempt, "text": text})

        try:
            response = await self.provider.complete(request, on_delta)
        except ProviderError as exc:
            retry_at = None
            if exc.retryable:
                delay = backoff_delay(self.spec.retry, self.state.failures + 1, exc.retry_after)
                retry_at = time.time() + delay
            await self.append(
                j.LLM_FAILED,
                {
                    "attempt": atom.attempt,
                    "error": exc.message,
                    "class": exc.error_class,
                    "retryable": exc.retryable,
                    "retry_at": retry_at,
                    "usage": exc.usage,
                },
            )
            return
        await self.append(
            j.LLM_COMPLETED,
            {
                "attempt": atom.attempt,
                "message": response.message,
                "usage": response.usage,
                "model": response.model or model.label,
                "stop_reason": response.stop_reason,
            },
        )

    async def act(self, atom: j.Act) -> None:
        assert self.spec is not None
        limit = asyncio.Semaphore(self.spec.max_parallel_tools)

        async def one(plan: j.CallPlan) -> None:
            async with limit:
                await self.call_tool(plan)

        await asyncio.gather(*(one(plan) for plan in atom.plans))

    async def call_tool(self, plan: j.CallPlan) -> None:
        call = plan.call
        base = {"call_id": call.id, "name": call.name}
        if plan.interrupted:
            await self.append(
                j.TOOL_FAILED, {**base, "error": j.INTERRUPTED_MESSAGE, "interrupted": True}
            )
            return
        tool = self.tools.get(call.name)
        if tool is None:
            await self.append(
                j.TOOL_FAILED,
                {
                    **base,
                    "error": f"unknown tool {call.name!r}; available: "
                    f"{', '.join(sorted(self.tools)) or 'none'}",
                },
            )
            return
        key = f"{self.run_id}:{call.id}"
        await self.append(
            j.TOOL_STARTED,
            {**base, "attempt": plan.attempt, "effect": tool.effect, "idempotency_key": key},
        )
        ctx = ToolContext(
            run_id=self.run_id, tool_call_id=call.id, idempotency_key=key, attempt=plan.attempt
        )
        try:
            if tool.timeout:
                output = await asyncio.wait_for(tool.invoke(call.arguments, ctx), tool.timeout)
            else:
                output = await tool.invoke(call.arguments, ctx)
        except TimeoutError:
            await self.append(
                j.TOOL_FAILED, {**base, "error": f"timed out after {tool.timeout:g}s"}
            )
            return
        except ToolError as exc:
            await self.append(j.TOOL_FAILED, {**base, "error": str(exc)})
            return
        except Exception as exc:
            await self.append(j.TOOL_FAILED, {**base, "error": f"{type(exc).__name__}: {exc}"})
            return
        await self.append(j.TOOL_COMPLETED, {**base, "output": render_output(output)})
