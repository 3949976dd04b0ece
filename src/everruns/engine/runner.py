"""Execute one claimed run: load, fold, decide, execute, append — until it parks or ends.

This is the only code path: a fresh run and a run taken over after a crash go
through the same loop. Every write goes through the run's `RunLog`, fenced by the
claim's epoch. The atoms are executed by their steps: `LLMStep` (reason, compact),
`ToolStep` (act, with `Subagents` for spawns); MCP tools are listed by `mcp_tools`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from everruns.core.decide import Act, Compact, Complete, Fail, Grade, Reason, Wait, decide
from everruns.core.events import EventType
from everruns.core.interrupt import cut
from everruns.core.state import State
from everruns.engine import framework
from everruns.engine.broker import Broker
from everruns.engine.grader import grade
from everruns.engine.keys import bindings
from everruns.engine.llm_step import LLMStep, lost_attempt_charge
from everruns.engine.mcp_tools import load_mcp_tools
from everruns.engine.models import candidates
from everruns.engine.observe import RunObserver
from everruns.engine.runlog import RunLog
from everruns.engine.subagents import Subagents
from everruns.engine.tool_step import ToolStep
from everruns.policy import check_spec
from everruns.providers import get_provider
from everruns.settings import Settings
from everruns.spec import AgentSpec
from everruns.store import Claim, Fenced, Moved, Store
from everruns.tools.base import Tool
from everruns.tools.reaper import reap, registry_for
from everruns.tools.registry import MCPPool, ToolSpecError, build_tools
from everruns.tools.workspace import Workspace

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
    INTERRUPT = "interrupt"  # a user interrupted the atom: journal the cut, park the run


class RunRunner:
    def __init__(self, store: Store, claim: Claim, options: RunnerOptions, broker: Broker):
        self.store = store
        self.claim = claim
        self.options = options
        self.broker = broker
        self.run_id = claim.run_id
        self.epoch = claim.epoch
        observer = RunObserver(claim.run_id, claim.agent_name, claim.epoch, options.worker_id)
        self.log = RunLog(store, claim.run_id, claim.epoch, broker, observer)
        self.stop_reason: str | None = None
        self.draining = False
        self.pause_requested = False
        self.steer_requested = False  # a steer was journaled: fold it in before deciding
        self.spec: AgentSpec | None = None
        self.origin = "api"  # where the spec came from (the agent version says)
        self.tools: dict[str, Tool] = {}
        self.workspace: Workspace | None = None
        self.on_started: Callable[[], None] | None = None  # start-up reads are done

    @property
    def state(self) -> State:
        """The fold of the journal as appended so far (owned by the run log)."""
        return self.log.state

    async def fail(self, reason: str, message: str, limit_run: str | None = None) -> None:
        await self.log.fail(reason, message, limit_run)

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
                await self.log.flush()  # keep what finished, whatever broke afterwards
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
            await self.log.release(wake_at=time.time() + 2.0, status="queued")

    async def _on_stop(self) -> None:
        reason = self.stop_reason
        try:
            if reason == StopReason.CANCEL:
                await asyncio.shield(self._finish_cancelled())
            elif reason == StopReason.SHUTDOWN:
                await asyncio.shield(self._release_for_shutdown())
            elif reason == StopReason.INTERRUPT:
                await asyncio.shield(self._finish_interrupted())
        except Fenced:
            pass

    async def _release_for_shutdown(self) -> None:
        await self.log.flush()
        await self.log.release(wake_at=time.time(), status="queued")

    async def _finish_cancelled(self) -> None:
        await self.log.append(
            EventType.RUN_CANCELLED,
            {"reason": "cancelled by user"},
        )

    async def _finish_interrupted(self) -> None:
        """Journal what the interrupt cut (core/interrupt.py) and park the run: the
        `run.interrupted` append releases the lease; the next user message wakes it."""
        # The LLM call the interrupt stopped is charged (llm.charged, carried): name it.
        stopped = [c for c in self.log.carried(EventType.LLM_CHARGED) if c.get("reason")]
        await self.log.flush()
        await self.log.refold()  # signals journaled meanwhile
        if self.state.terminal:
            return
        effects = {name: t.effect for name, t in self.tools.items()}
        results, summary = cut(self.state, effects)
        if stopped and "llm" not in summary:
            summary["llm"] = {
                "attempt": stopped[-1].get("attempt"),
                "model": stopped[-1].get("model"),
            }
        for kind, data in results:
            await self.log.append(kind, data, defer=True)
        await self.log.append(EventType.RUN_INTERRUPTED, summary)

    async def _take_steer(self) -> None:
        """A steer was journaled: fold it in now, so `decide` skips the calls not started."""
        self.steer_requested = False
        await self.log.flush()
        await self.store.clear_steer(self.run_id, self.epoch)
        await self.log.refold()

    async def _run(self) -> None:
        try:
            await self.log.refold()
            self.spec = await self.store.get_agent(self.claim.agent_name, self.claim.agent_version)
        finally:
            if self.on_started is not None:
                self.on_started()
        if self.state.terminal:
            await self.log.release(wake_at=None, status=self.state.status)
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
        settings = self.options.settings
        if self.spec.agent is not None:
            await self._framework_run(self.spec)
            return
        try:
            self.origin = await self.store.get_agent_origin(
                self.claim.agent_name, self.claim.agent_version
            )
            # The operator's policy again, before any tool module is imported.
            check_spec(
                self.spec, self.origin, settings, await bindings(self.store, settings, self.spec)
            )
            self.tools = build_tools(
                self.spec, allow_private_networks=settings.allow_private_networks
            )
            for model in candidates(self.spec):
                get_provider(model)
        except (ToolSpecError, ValueError) as exc:
            await self.fail("invalid_spec", str(exc))
            return
        self.workspace = Workspace(
            self.store, self.run_id, self.state.files, exclude=self.spec.workspace_exclude
        )
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
        if self.state.llm_in_flight:  # the previous holder died (or was fenced) mid-call
            self.log.carry(
                EventType.LLM_CHARGED,
                lost_attempt_charge(self.state, self.spec, self.tools, settings.prices),
            )
        await self.log.append(EventType.RUN_STARTED, started)
        if await load_mcp_tools(self.log, self.options.mcp_pool, self.spec, self.tools):
            await self._loop(self.spec)

    async def _loop(self, spec: AgentSpec) -> None:
        settings = self.options.settings
        llm = LLMStep(self.log, self.store, settings, spec, self.tools, self.origin)
        subagents = Subagents(self.log, self.store, settings, spec, self.origin)
        tools = ToolStep(
            self.log,
            self.store,
            self.tools,
            self.workspace,
            subagents,
            agent=self.claim.agent_name,
            max_parallel=spec.max_parallel_tools,
            max_sleep=spec.retry.durable_wait_after,
        )
        effects = {name: t.effect for name, t in self.tools.items()}
        while True:
            if self.draining:
                await self.log.flush()
                await self.log.release(wake_at=time.time(), status="queued")
                return
            if self.pause_requested:
                await self.log.append(
                    EventType.RUN_PAUSED,
                    {"by": "user"},
                )
                return
            if self.steer_requested:
                await self._take_steer()
            atom = decide(self.state, spec, time.time(), effects)
            if isinstance(atom, Grade):
                await grade(self.log, self.store, settings, spec, atom, self.origin)
                continue
            if isinstance(atom, Reason):
                waiting = await llm.reason(atom)
                if waiting is not None:
                    atom = waiting
            if isinstance(atom, Reason):
                pass
            elif isinstance(atom, Act):
                await tools.act(atom)
            elif isinstance(atom, Compact):
                await llm.compact(atom)
            elif isinstance(atom, Complete):
                try:
                    await self.log.append(
                        EventType.RUN_COMPLETED,
                        {"result": atom.result},
                        if_unchanged=True,  # a user message that just arrived gets an answer
                    )
                except Moved:
                    await self.log.refold()
                    continue
                return
            elif isinstance(atom, Fail):
                await self.fail(atom.reason, atom.message, atom.limit_run)
                return
            elif isinstance(atom, Wait):
                delay = atom.until - time.time()
                if delay <= spec.retry.durable_wait_after:
                    await self.log.flush()
                    await asyncio.sleep(max(0.0, delay))
                    continue
                if not await self._journal_waiting({"reason": atom.reason, "wake_at": atom.until}):
                    continue
                await self.log.release(
                    wake_at=atom.until, status="waiting", seen_seq=self.state.last_seq
                )
                return
            else:  # Idle: wait for a signal without holding a worker
                pending = [c.id for c in self.state.calls if c.approval == "requested"]
                if pending and not await self._journal_waiting(
                    {"reason": "approval", "calls": pending}
                ):
                    continue
                await self.log.flush()
                await self.log.release(wake_at=None, status="waiting", seen_seq=self.state.last_seq)
                return

    async def _framework_run(self, spec: AgentSpec) -> None:
        """A run whose loop is another framework's (engine/framework.py)."""
        settings = self.options.settings
        self.origin = await self.store.get_agent_origin(
            self.claim.agent_name, self.claim.agent_version
        )
        try:
            check_spec(spec, self.origin, settings, await bindings(self.store, settings, spec))
        except (ToolSpecError, ValueError) as exc:
            await self.fail("invalid_spec", str(exc))
            return
        await self.log.append(
            EventType.RUN_STARTED,
            {
                "worker": self.options.worker_id,
                "epoch": self.epoch,
                "takeover": self.claim.crashes > 0,
                "resumed": self.state.starts > 0,
                "crashes": self.claim.crashes,
                "framework": spec.agent.framework if spec.agent else None,
            },
        )
        while True:
            events = await self.store.load_events(self.run_id)
            try:
                result = await framework.execute_run(
                    self.log, events, spec, settings, self._framework_interrupt
                )
            except Exception as exc:
                if not await self._framework_stopped(exc):
                    continue
                return
            try:
                await self.log.append(
                    EventType.RUN_COMPLETED, {"result": result}, if_unchanged=True
                )
            except Moved:  # a user message arrived: replay, then answer it
                await self.log.refold()
                continue
            return

    def _framework_interrupt(self) -> str | None:
        if self.draining:
            return "drain"
        return "pause" if self.pause_requested else None

    async def _framework_stopped(self, exc: Exception) -> bool:
        """Journal why a framework run's loop stopped. False: execute it again."""
        lost = framework.find(exc, Fenced)
        if lost is not None:
            raise lost
        if framework.find(exc, framework.Parked) is not None:
            pending = [c.id for c in self.state.calls if c.approval == "requested"]
            if not await self._journal_waiting({"reason": "approval", "calls": pending}):
                return False
            await self.log.release(wake_at=None, status="waiting", seen_seq=self.state.last_seq)
            return True
        interrupted = framework.find(exc, framework.Interrupted)
        stop = framework.find(exc, framework.RunStop)
        replay = framework.find(exc, framework.NonDeterministicReplay)
        if isinstance(interrupted, framework.Interrupted):
            if interrupted.why == "pause":
                await self.log.append(EventType.RUN_PAUSED, {"by": "user"})
            else:
                await self.log.flush()
                await self.log.release(wake_at=time.time(), status="queued")
        elif isinstance(stop, framework.RunStop):
            await self.fail(stop.reason, stop.message)
        elif replay is not None:
            await self.fail("non_deterministic_replay", str(replay))
        elif isinstance(exc, ValueError) and str(exc).startswith("agent."):
            await self.fail("invalid_spec", str(exc))
        else:
            log.info("run %s: the framework agent raised", self.run_id, exc_info=exc)
            await self.fail("framework_error", f"the agent raised {type(exc).__name__}: {exc}")
        return True

    async def _journal_waiting(self, data: dict[str, Any]) -> bool:
        """Append run.waiting only if nothing was journaled since the decision to park.

        A signal (an approval, a message) that lands in between would otherwise be
        folded in and then slept through by `release(seen_seq=...)`. False: decide again.
        """
        try:
            await self.log.append(EventType.RUN_WAITING, data, if_unchanged=True)
        except Moved:
            await self.log.refold()
            return False
        return True


def _transient(exc: BaseException) -> bool:
    """A database or network outage: the run is retried, not failed."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(exc, DBAPIError | PoolTimeout | OSError | ConnectionError)
