"""The back end for a database: the commands' calls on `everruns.store.Store`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from everruns.api.wire import run_to_api
from everruns.cli.common import CliError, no_schedule
from everruns.cli.views import RunView, event_record
from everruns.client import MemoryItem
from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES, EventType
from everruns.core.state import fold
from everruns.engine.artifacts import run_file_contents, run_files, start_with_files
from everruns.spec import AgentSpec
from everruns.store import RunRow, Store
from everruns.store.idempotency import Busy, Mismatch, Replay, fingerprint
from everruns.store.records import dumps
from everruns.store.waits import wait_for_event

#: How often `follow` looks for new events in the database.
FOLLOW_POLL = 0.2
#: How many runs an id prefix is looked for among (the search also matches input and result).
PREFIX_SCAN = 500


async def started_once(
    store: Store,
    key: str,
    spec: AgentSpec,
    input: str | None,
    files: dict[str, bytes] | None = None,
) -> str:
    """`everruns start --idempotency-key` on a database: the run of the first start with
    this key (same table and rules as the API's keys, in the scope `local`)."""
    hashes = {p: hashlib.sha256(d).hexdigest() for p, d in sorted((files or {}).items())}
    body = dumps({"spec": spec.to_dict(), "input": input, "files": hashes or None}).encode()
    print_ = fingerprint("CLI", "start", b"", body)
    begun = await store.idempotency.begin("local", key, print_)
    if isinstance(begun, Replay):
        return str(json.loads(begun.body)["id"])
    if isinstance(begun, Mismatch):
        raise CliError(f"idempotency key {key!r} was already used to start a different run")
    if isinstance(begun, Busy):
        raise CliError(f"another start with idempotency key {key!r} is still in progress")
    try:
        run_id = await start_with_files(store, spec, input, files)
    except BaseException:
        await store.idempotency.abandon("local", key)
        raise
    await store.idempotency.finish("local", key, 201, dumps({"id": run_id}), "application/json")
    return run_id


def view(row: RunRow) -> RunView:
    return RunView.model_validate({**run_to_api(row), "lease_expires_at": row.lease_expires_at})


class LocalBackend:
    def __init__(self, store: Store):
        self.store = store

    @classmethod
    @asynccontextmanager
    async def open(cls, db: str | None, *, create: bool = False) -> AsyncIterator[LocalBackend]:
        store = await Store.open(db, create=create)
        try:
            yield cls(store)
        finally:
            await store.close()

    async def run_ids_starting(self, prefix: str) -> list[str]:
        rows = await self.store.list_runs(search=prefix, limit=PREFIX_SCAN)
        return [r.id for r in rows if r.id.startswith(prefix)]

    async def start_run(
        self,
        spec: AgentSpec,
        input: str | None,
        idempotency_key: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> str:
        if idempotency_key is None:
            return await start_with_files(self.store, spec, input, files)
        return await started_once(self.store, idempotency_key, spec, input, files)

    async def files(self, run_id: str) -> list[dict[str, Any]]:
        return await run_files(self.store, run_id)

    async def file_contents(self, run_id: str) -> dict[str, bytes]:
        return await run_file_contents(self.store, run_id)

    async def get_run(self, run_id: str) -> RunView:
        return view(await self.store.get_run(run_id))

    async def list_runs(
        self, *, status: str | None, agent: str | None, limit: int
    ) -> list[RunView]:
        rows = await self.store.list_runs(status=status, agent=agent, limit=limit)
        return [view(r) for r in rows]

    async def events(self, run_id: str, after: int) -> list[dict[str, Any]]:
        return [
            event_record(run_id, e.seq, e.type, e.ts, e.data)
            for e in await self.store.load_events(run_id, after=after)
        ]

    async def follow(self, run_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        last = after
        while True:
            batch = await self.events(run_id, last)
            for record in batch:
                yield record
                last = record["seq"]
                if record["type"] in TERMINAL_EVENTS:
                    return
            if not batch:
                row = await self.store.get_run(run_id)
                if row.status in TERMINAL_STATUSES and row.last_seq <= last:
                    return
                await asyncio.sleep(FOLLOW_POLL)

    async def cancel(self, run_id: str) -> str:
        return await self.store.cancel(run_id)

    async def _pending(self, run_id: str, call_id: str) -> None:
        await self.store.get_run(run_id)
        state = fold(await self.store.load_events(run_id))
        pending = [c.id for c in state.calls if c.approval == "requested"]
        if call_id not in pending:
            known = ", ".join(pending) or "none"
            raise CliError(
                f"run {run_id} has no pending approval for call {call_id!r} (pending: {known})"
            )

    async def approve(self, run_id: str, call_id: str) -> None:
        await self._pending(run_id, call_id)
        await self.store.signal(run_id, EventType.APPROVAL_GRANTED, {"call_id": call_id})

    async def deny(self, run_id: str, call_id: str, reason: str) -> None:
        await self._pending(run_id, call_id)
        await self.store.signal(
            run_id, EventType.APPROVAL_DENIED, {"call_id": call_id, "reason": reason}
        )

    async def message(self, run_id: str, text: str) -> int:
        return (await self.store.signal(run_id, EventType.MESSAGE_USER, {"content": text})).seq

    async def steer(self, run_id: str, text: str) -> int:
        return (await self.store.steer(run_id, text)).seq

    async def interrupt(self, run_id: str) -> tuple[str, int | None]:
        outcome, event, before = await self.store.interrupt(run_id)
        if event is not None or outcome != "requested":
            return outcome, event.seq if event else None
        kinds = frozenset({EventType.RUN_INTERRUPTED, *TERMINAL_EVENTS})
        seq = await wait_for_event(self.store, run_id, before, kinds)
        return ("interrupted" if seq else "requested"), seq

    async def set_limits(self, run_id: str, limits: dict[str, Any]) -> dict[str, Any]:
        return (await self.store.change_limits(run_id, limits, by="cli")).data

    async def resume(self, run_id: str) -> str:
        return await self.store.resume(run_id, by="cli")

    async def add_schedule(self, spec: AgentSpec, *, latest: bool) -> dict[str, Any]:
        return await self.store.save_schedule(spec, pin=not latest)

    async def list_schedules(self) -> list[dict[str, Any]]:
        return await self.store.list_schedules()

    async def delete_schedule(self, agent: str) -> None:
        if not await self.store.delete_schedule(agent):
            raise no_schedule(agent)

    async def set_schedule_enabled(self, agent: str, enabled: bool) -> dict[str, Any]:
        found = await self.store.set_schedule_enabled(agent, enabled)
        if found is None:
            raise no_schedule(agent)
        return found

    async def put_secret(self, name: str, value: str, allow_urls: list[str]) -> None:
        from everruns.secretbox import SecretsUnavailable, encrypt

        try:
            ciphertext = encrypt(value)
        except SecretsUnavailable as exc:
            raise CliError(str(exc)) from None
        await self.store.put_secret(name, ciphertext, allow_urls)

    async def list_secrets(self) -> dict[str, list[str] | None]:
        return dict(await self.store.secret_bindings())

    async def list_memory(self, agent: str) -> list[MemoryItem]:
        await self.store.get_agent(agent)  # "no agent 'x'"
        return [
            MemoryItem(key=n["id"], value=n["text"], updated_at=n["ts"], run_id=n["run_id"])
            for n in await self.store.recall(agent, limit=None)
        ]

    async def delete_memory(self, agent: str, key: str) -> None:
        await self.store.get_agent(agent)
        if not await self.store.forget(agent, key):
            raise CliError(f"agent {agent!r} has no note {key!r}")

    async def clear_memory(self, agent: str) -> int:
        await self.store.get_agent(agent)
        return await self.store.forget(agent)
