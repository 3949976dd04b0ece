"""Execute one claimed run: load, fold, decide, execute, append — until it parks or ends.

This is the only code path: a fresh run and a run taken over after a crash go
through the same loop. Every write is fenced by the claim's epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from everruns.core.backoff import backoff_delay
from everruns.core.context import CONTINUE_PROMPT, context_tokens, model_view
from everruns.core.decide import Act, CallPlan, Compact, Complete, Fail, Reason, Wait, decide
from everruns.core.events import INTERRUPTED_MESSAGE, Event, EventType
from everruns.core.state import State, apply, fold
from everruns.credentials import CredentialError, models_of, plan_key
from everruns.engine import crashpoints
from everruns.engine.broker import Broker
from everruns.engine.hardening import getenv
from everruns.engine.models import (
    acquire_rate_limits,
    breaker_key,
    candidates,
    choose_model,
)
from everruns.policy import check_spec
from everruns.providers import LLMRequest, ProviderError, get_provider
from everruns.providers.base import INVALID_ARGUMENTS
from everruns.providers.errors import BREAKER_CLASSES
from everruns.providers.pricing import cost_usd, price_for
from everruns.providers.sdk import classify_unexpected
from everruns.secretbox import SecretsUnavailable, decrypt
from everruns.settings import Settings
from everruns.spec import AgentSpec, ModelSpec, parse_spec
from everruns.store import Claim, Fenced, Moved, Store, StoreError
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
from everruns.tools.reaper import reap, registry_for
from everruns.tools.registry import MCPPool, ToolSpecError, build_tools, mcp_config
from everruns.tools.workspace import Workspace

if TYPE_CHECKING:
    from everruns.tools.mcp import MCPServerConfig

log = logging.getLogger("everruns.engine")


@dataclass
class RunnerOptions:
    worker_id: str
    max_crashes: int = 5
    settings: Settings = field(default_factory=Settings)
    mcp_pool: MCPPool = field(default_factory=MCPPool)


class StopReason:
    """Why the worker cancelled a run's task (set before cancelling)."""

    CANCEL = "cancel"  # a user cancelled the run
    SHUTDOWN = "shutdown"  # the worker is stopping: release the lease
    LOST = "lost"  # the lease was taken over: write nothing


class RunRunner:
    def __init__(self, store: Store, claim: Claim, options: RunnerOptions, broker: Broker):
        self.store = store
        self.claim = claim
        self.options = options
        self.broker = broker
        self.run_id = claim.run_id
        self.epoch = claim.epoch
        self.state = State()
        self.stop_reason: str | None = None
        self.draining = False
        self.pause_requested = False
        self._spawning: set[str] = set()
        self._ws_lock = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._carry: list[tuple[str, dict[str, Any]]] = []  # folded, committed with the next
        self.spec: AgentSpec | None = None
        self.origin = "api"  # where the spec came from (the agent version says)
        self.tools: dict[str, Tool] = {}
        self.workspace: Workspace | None = None
        self.on_started: Callable[[], None] | None = None  # start-up reads are done

    # ------------------------------------------------------------ journal

    async def append(
        self, kind: str, data: dict[str, Any], *, if_unchanged: bool = False, defer: bool = False
    ) -> Event:
        """Append one event (fenced), fold it, and publish it to live subscribers.

        `if_unchanged`: only if nobody appended since our last look (raises Moved).
        `defer`: fold the event now but commit it with the next append (one transaction per
        durable step: a completion rides with the next atom's start, which `decide` picks at
        once). Every path that waits or gives up the run commits what is carried first.
        """
        async with self._lock:
            if defer:
                event = Event(self.state.last_seq + 1, kind, time.time(), data)
                apply(self.state, event)
                self._carry.append((kind, data))
                return event
            return await self._commit([(kind, data)], if_unchanged=if_unchanged)

    async def flush(self) -> None:
        """Commit the carried events alone (before waiting, releasing or stopping)."""
        async with self._lock:
            if self._carry:
                await self._commit([], if_unchanged=False)

    async def _commit(self, new: list[tuple[str, dict[str, Any]]], *, if_unchanged: bool) -> Event:
        carry, self._carry = self._carry, []
        batch = [*carry, *new]
        committed_seq = self.state.last_seq - len(carry)
        for kind, _ in batch:
            crashpoints.hit(f"before:{kind}")
        try:
            events = await self.store.append(
                self.run_id,
                self.epoch,
                batch,
                expect_seq=committed_seq if if_unchanged else None,
            )
        except Moved:
            if carry:  # the carried events are ours to keep: commit them alone
                kept = await self.store.append(self.run_id, self.epoch, carry)
                for event in kept:
                    self.broker.publish(self.run_id, {"run_id": self.run_id, **event.to_dict()})
            raise  # the caller refolds from the journal and decides again
        if events[0].seq == committed_seq + 1:
            for event in events[len(carry) :]:
                apply(self.state, event)
        else:  # someone else appended (a user message): refold from the truth
            self.state = fold(await self.store.load_events(self.run_id))
        for event in events:
            self.broker.publish(self.run_id, {"run_id": self.run_id, **event.to_dict()})
        for kind, _ in batch:
            crashpoints.hit(f"after:{kind}")
        return events[-1]

    def publish_ephemeral(self, kind: str, data: dict[str, Any]) -> None:
        self.broker.publish(
            self.run_id, {"run_id": self.run_id, "type": kind, "ephemeral": True, "data": data}
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Execute until the run parks or ends. Raises nothing: an unexpected exception
        fails this run with a journaled reason (see `_on_unexpected`)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._on_stop()
        except Fenced:
            log.warning(
                "run %s: lease lost to another worker (epoch %s); dropped", self.run_id, self.epoch
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.flush()  # keep what finished, whatever broke afterwards
            await self._on_unexpected(exc)

    async def _on_unexpected(self, exc: Exception) -> None:
        """An exception nothing classified, inside one of this run's atoms.

        The run fails with reason `engine_error` and the exception journaled, so it
        cannot crash-loop the fleet and the worker's other runs go on. When even that
        append fails (the store is down), the lease is released for a retry shortly,
        rather than left to expire.
        """
        log.error("run %s: unexpected error in the engine", self.run_id, exc_info=exc)
        message = f"unexpected error in the engine: {type(exc).__name__}: {exc}"
        try:
            if not _transient(exc):
                await self.fail("engine_error", message)
                return
        except Fenced:
            return
        except Exception:
            log.exception("run %s: could not journal the failure; releasing", self.run_id)
        with contextlib.suppress(Exception):
            await self.store.release(
                self.run_id, self.epoch, wake_at=time.time() + 2.0, status="queued"
            )

    async def _on_stop(self) -> None:
        reason = self.stop_reason
        try:
            if reason == StopReason.CANCEL:
                await asyncio.shield(self._finish_cancelled())
            elif reason == StopReason.SHUTDOWN:
                await asyncio.shield(self._release_for_shutdown())
        except Fenced:
            pass

    async def _release_for_shutdown(self) -> None:
        await self.flush()
        await self.store.release(self.run_id, self.epoch, wake_at=time.time(), status="queued")

    async def _finish_cancelled(self) -> None:
        await self.append(
            EventType.RUN_CANCELLED,
            {"reason": "cancelled by user"},
        )

    async def _run(self) -> None:
        try:
            self.state = fold(await self.store.load_events(self.run_id))
            self.spec = await self.store.get_agent(self.claim.agent_name, self.claim.agent_version)
        finally:
            if self.on_started is not None:
                self.on_started()
        if self.state.terminal:
            await self.store.release(
                self.run_id, self.epoch, wake_at=None, status=self.state.status
            )
            return
        if self.claim.cancel_requested:
            await self._finish_cancelled()
            return
        if self.claim.crashes >= self.options.max_crashes:
            await self.fail(
                "crash_loop",
                f"{self.claim.crashes} workers in a row died while executing this run without "
                f"progress (at seq {self.state.last_seq}); stopped so it cannot take the fleet down",
            )
            return
        try:
            self.origin = await self.store.get_agent_origin(
                self.claim.agent_name, self.claim.agent_version
            )
            # The operator's policy again, before any tool module is imported.
            check_spec(
                self.spec, self.origin, self.options.settings, await self._bindings(self.spec)
            )
            self.tools = build_tools(
                self.spec, allow_private_networks=self.options.settings.allow_private_networks
            )
            for model in candidates(self.spec):
                get_provider(model)
        except (ToolSpecError, ValueError) as exc:
            await self.fail("invalid_spec", str(exc))
            return
        self.workspace = Workspace(self.store, self.run_id, self.state.files)
        started: dict[str, Any] = {
            "worker": self.options.worker_id,
            "epoch": self.epoch,
            "takeover": self.claim.crashes > 0,
            "resumed": self.state.starts > 0,
            "crashes": self.claim.crashes,
        }
        # Tool processes a previous holder of this run left behind die before we touch
        # its workspace; what was found is journaled (absent when nothing was).
        reaped = await asyncio.to_thread(reap, registry_for(self.workspace.path))
        if reaped:
            started["reaped"] = reaped
        await self.append(EventType.RUN_STARTED, started)
        if await self._load_mcp_tools():
            await self._loop()

    async def _load_mcp_tools(self) -> bool:
        """List each MCP server's tools once per run and journal the list, so a resumed
        run (on any worker) sees the same tools; False if the run failed."""
        assert self.spec is not None
        for index, entry in enumerate(self.spec.tools):
            if entry.mcp is None:
                continue
            try:
                config = mcp_config(entry, f"tools[{index}]")
            except ToolSpecError as exc:
                await self.fail("invalid_spec", str(exc))
                return False
            connection = await self.options.mcp_pool.get(config)
            server = _listing_key(config)
            listing = self.state.tool_listings.get(server)
            if listing is None:
                try:
                    listing = await connection.list_tools()
                except ToolError as exc:
                    await self.fail("mcp_unavailable", f"MCP server {config.label}: {exc}")
                    return False
                await self.append(EventType.TOOLS_LISTED, {"server": server, "tools": listing})
            from everruns.tools.mcp import tools_from_listing

            try:
                tools = tools_from_listing(config, listing, _constant(connection))
            except ValueError as exc:
                await self.fail("invalid_spec", f"tools[{index}].mcp: {exc}")
                return False
            for tool in tools:
                if tool.name in self.tools:
                    await self.fail("invalid_spec", f"duplicate tool name {tool.name!r}")
                    return False
                self.tools[tool.name] = tool
        return True

    async def _loop(self) -> None:
        assert self.spec is not None
        effects = {name: t.effect for name, t in self.tools.items()}
        while True:
            if self.draining:
                await self.flush()
                await self.store.release(
                    self.run_id, self.epoch, wake_at=time.time(), status="queued"
                )
                return
            if self.pause_requested:
                await self.append(
                    EventType.RUN_PAUSED,
                    {"by": "user"},
                )
                return
            atom = decide(self.state, self.spec, time.time(), effects)
            if isinstance(atom, Reason):
                waiting = await self.reason(atom)
                if waiting is not None:
                    atom = waiting
            if isinstance(atom, Reason):
                pass
            elif isinstance(atom, Act):
                await self.act(atom)
            elif isinstance(atom, Compact):
                await self.compact(atom)
            elif isinstance(atom, Complete):
                try:
                    await self.append(
                        EventType.RUN_COMPLETED,
                        {"result": atom.result},
                        if_unchanged=True,  # a user message that just arrived gets an answer
                    )
                except Moved:
                    self.state = fold(await self.store.load_events(self.run_id))
                    continue
                return
            elif isinstance(atom, Fail):
                await self.fail(atom.reason, atom.message)
                return
            elif isinstance(atom, Wait):
                delay = atom.until - time.time()
                if delay <= self.spec.retry.durable_wait_after:
                    await self.flush()
                    await asyncio.sleep(max(0.0, delay))
                    continue
                if not await self._journal_waiting({"reason": atom.reason, "wake_at": atom.until}):
                    continue
                await self.store.release(
                    self.run_id,
                    self.epoch,
                    wake_at=atom.until,
                    status="waiting",
                    seen_seq=self.state.last_seq,
                )
                return
            else:  # Idle: wait for a signal without holding a worker
                pending = [c.id for c in self.state.calls if c.approval == "requested"]
                if pending and not await self._journal_waiting(
                    {"reason": "approval", "calls": pending}
                ):
                    continue
                await self.flush()
                await self.store.release(
                    self.run_id,
                    self.epoch,
                    wake_at=None,
                    status="waiting",
                    seen_seq=self.state.last_seq,
                )
                return

    async def _journal_waiting(self, data: dict[str, Any]) -> bool:
        """Append run.waiting only if nothing was journaled since the decision to park.

        A signal (an approval, a message) that lands in between would otherwise be
        folded in and then slept through by `release(seen_seq=...)`. False: decide again.
        """
        try:
            await self.append(EventType.RUN_WAITING, data, if_unchanged=True)
        except Moved:
            self.state = fold(await self.store.load_events(self.run_id))
            return False
        return True

    async def fail(self, reason: str, message: str) -> None:
        await self.append(EventType.RUN_FAILED, {"error": message, "reason": reason})

    # ------------------------------------------------------------ atoms

    async def reason(self, atom: Reason) -> Wait | None:
        """One LLM call. Returns a Wait when no model may be called yet."""
        assert self.spec is not None
        retry = self.spec.retry
        choice = await choose_model(self.store, self.spec)
        if choice.model is None:
            assert choice.wake_at is not None
            return Wait(until=choice.wake_at, reason="circuit_breakers_open")
        model = choice.model
        previous = self.state.model or self.spec.model.label
        if model.label != previous:
            await self.append(
                EventType.LLM_FALLBACK,
                {
                    "from": previous,
                    "to": model.label,
                    "reason": "breaker_open" if choice.skipped else "recovered",
                    "skipped": list(choice.skipped),
                },
            )
        messages = model_view(self.state)
        if atom.continuation:
            messages.append({"role": "user", "content": CONTINUE_PROMPT})
        estimate = context_tokens(self.spec.system_prompt, self.state)
        if self.options.settings.rate_limits_for(model):
            await self.flush()  # acquiring may sleep: what is done must be durable first
        wait = await acquire_rate_limits(
            self.store, self.options.settings, model, estimate, max_sleep=retry.durable_wait_after
        )
        if wait:
            return Wait(until=time.time() + wait, reason="rate_limited")
        await self.append(
            EventType.LLM_STARTED,
            {"attempt": atom.attempt, "step": self.state.steps + 1, "model": model.label},
        )
        request = LLMRequest(
            model=model,
            system=self.spec.system_prompt,
            messages=messages,
            tools=[t.schema for t in self.tools.values()],
            step=self.state.steps,
            attempt=atom.attempt,
        )

        def on_delta(text: str) -> None:
            self.publish_ephemeral("llm.delta", {"attempt": atom.attempt, "text": text})

        price = price_for(model, self.options.settings.prices)
        try:
            provider = get_provider(model, await self._stored_key(model))
            response = await asyncio.wait_for(
                provider.complete(request, on_delta), model.timeouts.total
            )
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = ProviderError(
                    f"no complete answer within {model.timeouts.total:g}s (timeouts.total)",
                    error_class="timeout",
                )
            elif not isinstance(exc, ProviderError):
                # Building or sending the request failed in a way nobody classified:
                # journal it and fail the run, never a crash (and a crash loop).
                exc = classify_unexpected(exc)
            await self._record_failure(atom, model, exc, price, estimate)
            return None
        usage = {**response.usage, "cost_usd": cost_usd(response.usage, price)}
        if not model.offline:
            await self.store.record_outcome(
                breaker_key(model),
                ok=True,
                threshold=retry.breaker_threshold,
                cooldown=retry.breaker_cooldown,
            )
            await self._correct_rate(model, estimate, usage)
        await self.append(
            EventType.LLM_COMPLETED,
            defer=True,  # committed with the next atom's start (decided at once)
            data={
                "attempt": atom.attempt,
                "message": response.message,
                "usage": usage,
                "model": response.model or model.label,
                "stop_reason": response.stop_reason,
                **({"truncated": True} if response.truncated else {}),
                **({"continuation": True} if atom.continuation else {}),
            },
        )
        return None

    async def _bindings(self, spec: AgentSpec | None = None) -> dict[str, list[str]]:
        """Stored secrets' URL bindings; skips the query when `spec` names no credential
        that settings do not bind (most runs)."""
        settings = self.options.settings
        if spec is not None and not any(
            m.credential is not None and m.credential not in settings.credentials
            for _, m in models_of(spec)
        ):
            return {}
        return await self.store.secret_bindings()

    async def _stored_key(self, model: ModelSpec) -> str | None:
        """The key this model's call carries, decided by the operator's bindings just
        before the request (see everruns.credentials); `not-needed` when none may go."""
        if model.provider == "scripted":
            return None
        settings = self.options.settings
        stored = model.credential is not None and model.credential not in settings.credentials
        bindings = await self._bindings() if stored else {}
        try:
            plan = plan_key(model, self.origin, self.options.settings, bindings)
        except CredentialError as exc:
            raise ProviderError(str(exc), error_class="auth", retryable=False) from None
        if plan.source == "none":
            return "not-needed"
        assert plan.name is not None
        if plan.source in ("env", "default"):
            value = getenv(plan.name)  # the worker holds keys outside os.environ (hardening)
            if value:
                return value
        if plan.source == "env":
            raise _missing(f"environment variable {plan.name} (the key for {model.label})")
        ciphertext = await self.store.get_secret(plan.name)
        if plan.source == "default":
            bindings = await self._bindings()
        if plan.source == "default" and (
            ciphertext is None or not _stored_default_allowed(plan, bindings)
        ):
            raise _missing(f"environment variable {plan.name} (the API key for {model.label})")
        if ciphertext is None:
            raise _missing(f"stored secret {plan.name!r}")
        try:
            return decrypt(ciphertext)
        except SecretsUnavailable as exc:
            raise ProviderError(str(exc), error_class="auth", retryable=False) from None

    async def _correct_rate(self, model: ModelSpec, estimate: int, usage: dict[str, Any]) -> None:
        actual = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        for limit in self.options.settings.rate_limits_for(model):
            if limit.tpm:
                await self.store.charge_tokens(limit.key, actual - estimate)

    async def _record_failure(
        self, atom: Reason, model: ModelSpec, exc: ProviderError, price: Any, estimate: int
    ) -> None:
        assert self.spec is not None
        retry = self.spec.retry
        opened_until = None
        if exc.error_class in BREAKER_CLASSES and not model.offline:
            opened_until = await self.store.record_outcome(
                breaker_key(model),
                ok=False,
                threshold=retry.breaker_threshold,
                cooldown=retry.breaker_cooldown,
            )
        usage: dict[str, Any] = dict(exc.usage)
        if usage:
            usage["cost_usd"] = cost_usd(usage, price)
            await self._correct_rate(model, estimate, usage)
        retry_at = None
        if exc.retryable:
            has_fallback = opened_until is not None and len(candidates(self.spec)) > 1
            delay = (
                0.0
                if has_fallback
                else backoff_delay(retry, self.state.failures + 1, exc.retry_after)
            )
            retry_at = time.time() + delay
        data: dict[str, Any] = {
            "attempt": atom.attempt,
            "model": model.label,
            "error": exc.message,
            "class": exc.error_class,
            "retryable": exc.retryable,
            "retry_at": retry_at,
            "retry_after": exc.retry_after,
            "status": exc.status,
            "usage": usage,
        }
        if opened_until is not None:
            data["breaker_open_until"] = opened_until
        await self.append(EventType.LLM_FAILED, data)

    async def act(self, atom: Act) -> None:
        assert self.spec is not None
        limit = asyncio.Semaphore(self.spec.max_parallel_tools)

        async def one(plan: CallPlan) -> None:
            async with limit:
                await self.call_tool(plan)

        await asyncio.gather(*(one(plan) for plan in atom.plans))

    async def _spawn(self, call_id: str, request: SpawnRequest) -> str:
        assert self.spec is not None
        options = next((t.options for t in self.spec.tools if t.builtin == "subagents"), {})
        max_depth = int(options.get("max_depth", 3))
        max_children = int(options.get("max_children", 10))
        if self.state.depth + 1 > max_depth:
            raise ToolError(f"sub-agent depth limit reached (max_depth={max_depth})")
        child_id = _child_id(f"{self.run_id}:{call_id}")
        # Parallel spawns of one answer are counted before their results are journaled.
        known = set(self.state.children) | self._spawning
        if child_id not in known and len(known) >= max_children:
            raise ToolError(f"sub-agent fan-out limit reached (max_children={max_children})")
        self._spawning.add(child_id)
        origin = self.origin  # a child never has more trust than its parent
        if request.spec is not None:
            spec = parse_spec(request.spec, "spawn_agent.spec")
        elif request.agent is not None:
            try:
                spec = await self.store.get_agent(request.agent)
                if await self.store.get_agent_origin(request.agent) == "api":
                    origin = "api"
            except StoreError as exc:
                raise ToolError(str(exc)) from None
        else:
            spec = self.spec
        try:
            # A spec the model wrote may only name credentials the operator bound.
            check_spec(
                spec,
                origin,
                self.options.settings,
                await self._bindings(spec),
                spawned=request.spec is not None,
            )
            build_tools(spec, allow_private_networks=self.options.settings.allow_private_networks)
        except ToolSpecError as exc:
            raise ToolError(f"the sub-agent's spec is invalid: {exc}") from None
        return await self.store.create_run(
            spec,
            request.input,
            parent_id=self.run_id,
            run_id=child_id,
            created_data={"depth": self.state.depth + 1},
            origin=origin,
        )

    async def compact(self, atom: Compact) -> None:
        """Replace messages[:until] by a model-written summary (the journal keeps all)."""
        assert self.spec is not None
        await self.append(
            EventType.COMPACTION_STARTED, {"until": atom.until, "reason": atom.reason}
        )
        model = self.spec.context.summary_model or self.spec.model
        older = self.state.messages[self.state.compacted_until : atom.until]
        text = "\n\n".join(_render_message(m) for m in older)
        if self.state.summary:
            text = f"Earlier summary:\n{self.state.summary}\n\nThen:\n{text}"
        request = LLMRequest(
            model=model,
            system=COMPACTION_PROMPT,
            messages=[{"role": "user", "content": text}],
            tools=[],
            step=self.state.steps,
            attempt=1,
            purpose="compaction",
        )
        price = price_for(model, self.options.settings.prices)
        try:
            provider = get_provider(model, await self._stored_key(model))
            response = await asyncio.wait_for(
                provider.complete(request, lambda _t: None), model.timeouts.total
            )
        except (ProviderError, TimeoutError) as exc:
            message = getattr(exc, "message", None) or "timed out"
            await self.fail("compaction_failed", f"could not compact the context: {message}")
            return
        usage = {**response.usage, "cost_usd": cost_usd(response.usage, price)}
        await self.append(
            EventType.CONTEXT_COMPACTED,
            {
                "until": atom.until,
                "summary": response.message.get("content") or "",
                "usage": usage,
                "model": model.label,
            },
        )

    async def call_tool(self, plan: CallPlan) -> None:
        call = plan.call
        base = {"call_id": call.id, "name": call.name}
        if plan.action == "interrupt":
            await self.append(
                EventType.TOOL_FAILED, {**base, "error": INTERRUPTED_MESSAGE, "interrupted": True}
            )
            return
        if plan.action == "deny":
            reason = call.denial or "no reason given"
            await self.append(
                EventType.TOOL_FAILED,
                {**base, "error": f"denied by a human: {reason}", "denied": True},
            )
            return
        if plan.action == "request_approval":
            await self.append(EventType.APPROVAL_REQUESTED, {**base, "arguments": call.arguments})
            return
        if plan.action == "wake":
            if call.wait_for is not None:
                results = [
                    self.state.children_done[r]
                    for r in call.wait_for
                    if r in self.state.children_done
                ]
                output = render_output(
                    [
                        {k: r.get(k) for k in ("run_id", "status", "result", "error")}
                        for r in results
                    ]
                )
            else:
                output = f"slept until {_iso(call.wake_at)}"
            await self._resolve_call(EventType.TOOL_COMPLETED, {**base, "output": output})
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
        key = f"{self.run_id}:{call.id}"
        await self.append(
            EventType.TOOL_STARTED,
            {**base, "attempt": plan.attempt, "effect": tool.effect, "idempotency_key": key},
        )
        # Calls that touch the workspace run one at a time, so the file changes journaled
        # with a call's result are exactly that call's (not a parallel call's half-done writes).
        uses_ws = tool.uses_workspace and self.workspace is not None
        async with self._ws_lock if uses_ws else contextlib.nullcontext():
            ctx = ToolContext(
                run_id=self.run_id,
                tool_call_id=call.id,
                idempotency_key=key,
                attempt=plan.attempt,
                workspace=await self.workspace.materialize()
                if uses_ws and self.workspace
                else None,
                notes=tuple(self.state.notes),
                agent=self.claim.agent_name,
                store=self.store,
            )
            try:
                if tool.timeout:
                    output = await asyncio.wait_for(tool.invoke(call.arguments, ctx), tool.timeout)
                else:
                    output = await tool.invoke(call.arguments, ctx)
            except TimeoutError:
                error = f"timed out after {tool.timeout:g}s" if tool.timeout else "TimeoutError"
            except ToolError as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                await self._tool_result(tool, base, output, uses_ws)
                return
            changes = await self._changes() if uses_ws else {}
            await self._resolve_call(EventType.TOOL_FAILED, {**base, "error": error, **changes})

    async def _changes(self) -> dict[str, Any]:
        """Workspace changes since the last journaled result, to journal with this one."""
        files = await self.workspace.commit() if self.workspace else {}
        return {"files": files} if files else {}

    async def _tool_result(
        self, tool: Tool, base: dict[str, Any], output: Any, uses_ws: bool = False
    ) -> None:
        if isinstance(output, SleepRequest):
            await self.append(
                EventType.TOOL_WAITING, {**base, "wake_at": output.until, "reason": output.reason}
            )
            return
        if isinstance(output, WaitRequest):
            if not output.run_ids:
                output = WaitRequest(run_ids=tuple(self.state.children), mode=output.mode)
            if not output.run_ids:
                await self.append(
                    EventType.TOOL_FAILED, {**base, "error": "this run has no sub-agents"}
                )
                return
            unknown = [r for r in output.run_ids if r not in self.state.children]
            if unknown:
                await self.append(
                    EventType.TOOL_FAILED,
                    {**base, "error": f"not sub-agents of this run: {', '.join(unknown)}"},
                )
                return
            await self.append(
                EventType.TOOL_WAITING,
                {
                    **base,
                    "wait_for": list(output.run_ids),
                    "mode": output.mode,
                    "reason": "sub-agents",
                },
            )
            return
        if isinstance(output, SpawnRequest):
            try:
                child = await self._spawn(base["call_id"], output)
            except ToolError as exc:
                await self.append(EventType.TOOL_FAILED, {**base, "error": str(exc)})
                return
            await self.append(
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

    async def _resolve_call(self, kind: str, data: dict[str, Any]) -> None:
        """Journal a call's result. The last open call of an answer is deferred: the next
        atom (an LLM call, decided at once) commits it with its own start."""
        others = any(c.status != "done" and c.id != data["call_id"] for c in self.state.calls)
        await self.append(kind, data, defer=not others)


COMPACTION_PROMPT = (
    "You compress the earlier part of an agent's conversation so it can continue within its "
    "context window. Write a faithful, dense summary: the task, decisions made, facts learned "
    "(with sources), tool results that still matter, open questions and next steps. Keep "
    "identifiers, numbers, file names and URLs exact. Do not invent anything."
)


def _render_message(message: dict[str, Any]) -> str:
    role = message["role"]
    if role == "tool":
        return f"[tool result {message.get('name')} {message.get('tool_call_id')}]\n{message.get('content')}"
    if role == "assistant" and message.get("tool_calls"):
        calls = "; ".join(f"{c['name']}({c.get('arguments')})" for c in message["tool_calls"])
        return f"[assistant] {message.get('content') or ''}\n[tool calls] {calls}"
    return f"[{role}] {message.get('content') or ''}"


def _transient(exc: BaseException) -> bool:
    """A database or network outage: the run is retried, not failed."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(exc, DBAPIError | PoolTimeout | OSError | ConnectionError)


def _listing_key(config: MCPServerConfig) -> str:
    """Which server a journaled tool list belongs to. Not `config.label`: that shortens
    long command lines, so two servers could share it. The full URL or command line,
    plus a digest of `cwd`/`env`/`headers` when set (they can select another server or
    other tools; the digest keeps secrets out of the journal)."""
    key = config.url if config.url is not None else shlex.join(config.command or [])
    extra = {"cwd": config.cwd, "env": config.env, "headers": config.headers}
    extra = {name: value for name, value in extra.items() if value}
    if extra:
        digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()
        key += f" [{digest[:12]}]"
    return key


def _constant(value: Any) -> Any:
    def get() -> Any:
        return value

    return get


def _child_id(idempotency_key: str) -> str:
    """The same child run id on every attempt of one spawn call."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return "run_" + digest[:26]


def _iso(ts: float | None) -> str:
    if ts is None:
        return "now"
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def _stored_default_allowed(plan: Any, bindings: dict[str, list[str]]) -> bool:
    """A stored secret named like the provider's default variable stands in for it only
    at a URL its own binding allows."""
    from everruns.credentials import url_allowed

    return plan.url is not None and url_allowed(plan.url, bindings.get(plan.name, []))


def _missing(what: str) -> ProviderError:
    return ProviderError(f"{what} is not set", error_class="auth", retryable=False)
