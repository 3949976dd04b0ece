"""The back end for an `everruns server`: the commands' calls on the async SDK client."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from everruns.cli.common import CliError
from everruns.cli.views import RunView, event_record
from everruns.client import AsyncClient, Event, Run
from everruns.spec import AgentSpec


def view(run: Run) -> RunView:
    return RunView.model_validate(run.model_dump())


def record(event: Event) -> dict[str, Any]:
    return event_record(event.run_id, event.seq, event.type, event.ts, event.data)


class RemoteBackend:
    def __init__(self, client: AsyncClient):
        self.client = client

    @classmethod
    @asynccontextmanager
    async def connect(cls, server: str, token: str | None) -> AsyncIterator[RemoteBackend]:
        async with AsyncClient(server, token) as client:
            yield cls(client)

    async def start_run(
        self, spec: AgentSpec, input: str | None, files: dict[str, bytes] | None = None
    ) -> str:
        return (await self.client.runs.start(spec=spec.to_dict(), input=input, files=files)).id

    async def files(self, run_id: str) -> list[dict[str, Any]]:
        return await self.client.runs.files(run_id)

    async def file_contents(self, run_id: str) -> dict[str, bytes]:
        archive = zipfile.ZipFile(io.BytesIO(await self.client.runs.files_zip(run_id)))
        return {name: archive.read(name) for name in archive.namelist()}

    async def get_run(self, run_id: str) -> RunView:
        return view(await self.client.runs.get(run_id))

    async def list_runs(
        self, *, status: str | None, agent: str | None, limit: int
    ) -> list[RunView]:
        items, _ = await self.client.runs.list(status=status, agent=agent, limit=limit)
        # A list cuts long inputs and results (`truncated`); `ls --json` prints them whole,
        # as it does on a local database.
        return [view(await self.client.runs.get(r.id) if r.truncated else r) for r in items]

    async def events(self, run_id: str, after: int) -> list[dict[str, Any]]:
        return [record(e) for e in await self.client.runs.events(run_id, after=after)]

    async def follow(self, run_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        async for event in self.client.runs.stream(run_id, after=after, include_ephemeral=False):
            yield record(event)

    async def cancel(self, run_id: str) -> str:
        return await self.client.runs.cancel(run_id)

    async def approve(self, run_id: str, call_id: str) -> None:
        await self.client.runs.approve(run_id, call_id)

    async def deny(self, run_id: str, call_id: str, reason: str) -> None:
        await self.client.runs.deny(run_id, call_id, reason)

    async def message(self, run_id: str, text: str) -> int:
        seq = (await self.client.runs.message(run_id, text)).seq
        if seq is None:
            raise CliError(f"the server did not journal the message to {run_id}")
        return seq

    async def set_limits(self, run_id: str, limits: dict[str, Any]) -> dict[str, Any]:
        return (await self.client.runs.set_limits(run_id, **limits)).data

    async def resume(self, run_id: str) -> str:
        return await self.client.runs.resume(run_id)
