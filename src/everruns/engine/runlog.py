"""One claimed run's journal as the engine sees it: append, flush, refold, release.

The only object that writes a run's events. It owns the folded `state`, so the fold
always matches what was appended (or, when someone else appended, what the journal
says), the carry of deferred events, the crash points around each commit, and the
publishing of every committed event to live subscribers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from everruns.core.budget import Ledger, charge
from everruns.core.events import Event, EventType
from everruns.core.state import State, apply, fold
from everruns.engine import crashpoints
from everruns.engine.broker import Broker
from everruns.engine.observe import RunObserver
from everruns.store import Moved, Store


class RunLog:
    """The fenced journal of one run under one claim (`epoch`)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        epoch: int,
        broker: Broker,
        observer: RunObserver | None = None,
    ):
        self.store = store
        self.run_id = run_id
        self.epoch = epoch
        self.broker = broker
        self.observer = observer  # metrics and traces of what this log commits
        self.state = State()
        self._lock = asyncio.Lock()
        self._carry: list[tuple[str, dict[str, Any]]] = []  # folded, committed with the next

    async def refold(self) -> State:
        """Fold the journal from the store (at start, and after someone else appended)."""
        events = await self.store.load_events(self.run_id)
        self.state = fold(events)
        if self.observer is not None:
            self.observer.loaded(events, self.state)
        return self.state

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
                return self.carry(kind, data)
            return await self._commit([(kind, data)], if_unchanged=if_unchanged)

    def carry(self, kind: str, data: dict[str, Any]) -> Event:
        """`append(defer=True)` without awaiting: safe in a task being cancelled (the
        charge of an interrupted LLM call). Committed with the next append, or never if
        the lease is lost (then the next holder charges the attempt itself)."""
        event = Event(self.state.last_seq + 1, kind, time.time(), data)
        apply(self.state, event)
        self._carry.append((kind, data))
        return event

    def carried_charge(self) -> Ledger:
        """What the carried (folded, not yet committed) events charged: the tree's sums
        in the store do not have it yet."""
        total = Ledger()
        for _, data in self._carry:
            total = total + charge(data.get("usage"))
        return total

    async def flush(self) -> None:
        """Commit the carried events alone (before waiting, releasing or stopping)."""
        async with self._lock:
            if self._carry:
                await self._commit([], if_unchanged=False)

    async def fail(self, reason: str, message: str, limit_run: str | None = None) -> None:
        data = {"error": message, "reason": reason}
        if limit_run is not None:
            data["limit_run"] = limit_run
        await self.append(EventType.RUN_FAILED, data)

    async def release(
        self, *, wake_at: float | None, status: str, seen_seq: int | None = None
    ) -> None:
        """Give the lease up (see `Store.release`). Callers `flush` first when they carry."""
        await self.store.release(
            self.run_id, self.epoch, wake_at=wake_at, status=status, seen_seq=seen_seq
        )

    def publish_ephemeral(self, kind: str, data: dict[str, Any]) -> None:
        self.broker.publish(
            self.run_id, {"run_id": self.run_id, "type": kind, "ephemeral": True, "data": data}
        )

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
                    self._publish(event)
            raise  # the caller refolds from the journal and decides again
        if events[0].seq == committed_seq + 1:
            for event in events[len(carry) :]:
                apply(self.state, event)
        else:  # someone else appended (a user message): refold from the truth
            self.state = fold(await self.store.load_events(self.run_id))
        for event in events:
            self._publish(event)
        for kind, _ in batch:
            crashpoints.hit(f"after:{kind}")
        return events[-1]

    def trace_headers(self, started: Event) -> dict[str, str]:
        """W3C trace context of the atom `started` opened ({} when tracing is off)."""
        return self.observer.headers(started) if self.observer is not None else {}

    def _publish(self, event: Event) -> None:
        if self.observer is not None:
            self.observer.committed(event, self.state)
        self.broker.publish(self.run_id, {"run_id": self.run_id, **event.to_dict()})
