"""API routes for an agent's memory (the notes its `memory` tool keeps across runs):
list them, delete one, clear them all. A note's `key` is its id, its `value` its text."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from pydantic import BaseModel

from everruns.api.problems import Problem
from everruns.store import Store, StoreError

_AGENT = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_KEY = Path(max_length=40)


class MemoryItem(BaseModel):
    key: str
    value: str
    updated_at: float
    run_id: str | None = None


class MemoryPage(BaseModel):
    items: list[MemoryItem]


def memory_item(note: dict[str, Any]) -> MemoryItem:
    return MemoryItem(
        key=note["id"], value=note["text"], updated_at=note["ts"], run_id=note["run_id"]
    )


async def _known_agent(store: Store, name: str) -> None:
    try:
        await store.get_agent(name)
    except StoreError:
        raise Problem(404, "agent-not-found", "Agent not found", f"no agent {name!r}") from None


def add_memory_routes(app: FastAPI, auth: list[Any]) -> None:
    def store_of(request: Request) -> Store:
        return request.app.state.store

    @app.get("/v1/agents/{name}/memory", tags=["agents"], dependencies=auth)
    async def list_memory(name: Annotated[str, _AGENT], request: Request) -> MemoryPage:
        """Every note the agent keeps, oldest first."""
        store = store_of(request)
        await _known_agent(store, name)
        return MemoryPage(items=[memory_item(n) for n in await store.recall(name, limit=None)])

    @app.delete(
        "/v1/agents/{name}/memory/{key}", tags=["agents"], status_code=204, dependencies=auth
    )
    async def delete_memory(
        name: Annotated[str, _AGENT], key: Annotated[str, _KEY], request: Request
    ) -> None:
        """Forget one note; later runs no longer see it."""
        store = store_of(request)
        await _known_agent(store, name)
        if not await store.forget(name, key):
            raise Problem(
                404, "memory-not-found", "Memory not found", f"agent {name!r} has no note {key!r}"
            )

    @app.delete("/v1/agents/{name}/memory", tags=["agents"], status_code=204, dependencies=auth)
    async def clear_memory(name: Annotated[str, _AGENT], request: Request) -> None:
        """Forget every note of the agent."""
        store = store_of(request)
        await _known_agent(store, name)
        await store.forget(name)
