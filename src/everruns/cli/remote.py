"""The back end for an `everruns server`: the commands' calls on the async SDK client."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from everruns.cli.common import CliError, no_schedule
from everruns.cli.views import RunView, event_record
from everruns.client import ApiError, AsyncClient, Event, MemoryItem, Run
from everruns.spec import AgentSpec


@contextmanager
def _missing_schedule(agent: str) -> Iterator[None]:
    """The server's 404 for a schedule, as the database back end words it."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 404:
            raise no_schedule(agent) from None
        raise


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

    async def run_ids_starting(self, prefix: str) -> list[str]:
        items, _ = await self.client.runs.list(q=prefix, limit=500)
        return [r.id for r in items if r.id.startswith(prefix)]

    async def start_run(
        self,
        spec: AgentSpec,
        input: str | None,
        idempotency_key: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> str:
        # The server imports tools from its own path: a local file's directories stay here.
        body = spec.model_copy(update={"python_path": None}).to_dict()
        run = await self.client.runs.start(
            spec=body, input=input, idempotency_key=idempotency_key, files=files
        )
        return run.id

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

    async def steer(self, run_id: str, text: str) -> int:
        seq = (await self.client.runs.steer(run_id, text)).seq
        if seq is None:
            raise CliError(f"the server did not journal the steer of {run_id}")
        return seq

    async def interrupt(self, run_id: str) -> tuple[str, int | None]:
        receipt = await self.client.runs.interrupt(run_id)
        return receipt.outcome, receipt.seq

    async def set_limits(self, run_id: str, limits: dict[str, Any]) -> dict[str, Any]:
        return (await self.client.runs.set_limits(run_id, **limits)).data

    async def resume(self, run_id: str) -> str:
        return await self.client.runs.resume(run_id)

    async def add_schedule(self, spec: AgentSpec, *, latest: bool) -> dict[str, Any]:
        body = spec.model_copy(update={"python_path": None}).to_dict()
        if latest:  # store the agent, schedule its name: each fire runs its newest version
            agent = await self.client.agents.create(body)
            saved = await self.client.schedules.create(agent.name)
        else:
            saved = await self.client.schedules.create(spec=body)
        return saved.model_dump()

    async def list_schedules(self) -> list[dict[str, Any]]:
        return [s.model_dump() for s in await self.client.schedules.list()]

    async def delete_schedule(self, agent: str) -> None:
        with _missing_schedule(agent):
            await self.client.schedules.delete(agent)

    async def set_schedule_enabled(self, agent: str, enabled: bool) -> dict[str, Any]:
        with _missing_schedule(agent):
            if enabled:
                return (await self.client.schedules.resume(agent)).model_dump()
            return (await self.client.schedules.pause(agent)).model_dump()

    async def put_secret(self, name: str, value: str, allow_urls: list[str]) -> None:
        await self.client.secrets.put(name, value, allow_urls)

    async def list_secrets(self) -> dict[str, list[str] | None]:
        return dict.fromkeys(await self.client.secrets.list())

    async def list_memory(self, agent: str) -> list[MemoryItem]:
        return await self.client.agents.list_memory(agent)

    async def delete_memory(self, agent: str, key: str) -> None:
        await self.client.agents.delete_memory(agent, key)

    async def clear_memory(self, agent: str) -> int:
        count = len(await self.client.agents.list_memory(agent))
        await self.client.agents.clear_memory(agent)
        return count
