"""The back end for a database: the commands' calls on `everruns.store.Store`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from everruns import journal as j
from everruns.cli.common import CliError
from everruns.cli.views import RunView, event_record
from everruns.client import Usage
from everruns.spec import AgentSpec
from everruns.store import RunRow, Store

#: How often `follow` looks for new events in the database.
FOLLOW_POLL = 0.2


def view(row: RunRow) -> RunView:
    usage = Usage(
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        total_tokens=row.input_tokens + row.output_tokens,
        cost_usd=round(row.cost_usd, 6),
    )
    return RunView(
        id=row.id,
        agent=row.agent_name,
        agent_version=row.agent_version,
        parent_id=row.parent_id,
        status=row.status,
        steps=row.steps,
        usage=usage,
        input=row.input,
        result=row.result,
        error=row.error,
        epoch=row.epoch,
        lease_owner=row.lease_owner,
        wake_at=row.wake_at,
        last_seq=row.last_seq,
        created_at=row.created_at,
        updated_at=row.updated_at,
        lease_expires_at=row.lease_expires_at,
    )


class LocalBackend:
    def __init__(self, store: Store):
        self.store = store

    @classmethod
    @asynccontextmanager
    async def open(cls, db: str | None) -> AsyncIterator[LocalBackend]:
        store = await Store.open(db)
        try:
            yield cls(store)
        finally:
            await store.close()

    async def start_run(self, spec: AgentSpec, input: str | None) -> str:
        return await self.store.create_run(spec, input)

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
                if record["type"] in j.TERMINAL_EVENTS:
                    return
            if not batch:
                row = await self.store.get_run(run_id)
                if row.status in j.TERMINAL_STATUSES and row.last_seq <= last:
                    return
                await asyncio.sleep(FOLLOW_POLL)

    async def cancel(self, run_id: str) -> str:
        return await self.store.cancel(run_id)

    async def _pending(self, run_id: str, call_id: str) -> None:
        await self.store.get_run(run_id)
        state = j.fold(await self.store.load_events(run_id))
        pending = [c.id for c in state.calls if c.approval == "requested"]
        if call_id not in pending:
            known = ", ".join(pending) or "none"
            raise CliError(
                f"run {run_id} has no pending approval for call {call_id!r} (pending: {known})"
            )

    async def approve(self, run_id: str, call_id: str) -> None:
        await self._pending(run_id, call_id)
        await self.store.signal(run_id, j.APPROVAL_GRANTED, {"call_id": call_id})

    async def deny(self, run_id: str, call_id: str, reason: str) -> None:
        await self._pending(run_id, call_id)
        await self.store.signal(run_id, j.APPROVAL_DENIED, {"call_id": call_id, "reason": reason})

    async def message(self, run_id: str, text: str) -> int:
        return (await self.store.signal(run_id, j.MESSAGE_USER, {"content": text})).seq

    # Local only: the journaled workspace lives in the database's blobs.

    async def workspace_files(self, run_id: str) -> dict[str, str]:
        """path -> sha256 of each file in the run's workspace, as journaled."""
        await self.store.get_run(run_id)
        return dict(j.fold(await self.store.load_events(run_id)).files)

    async def export_workspace(self, run_id: str, target: Path) -> int:
        from everruns.tools.workspace import export_files

        files = await self.workspace_files(run_id)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        return await export_files(self.store, files, target)
