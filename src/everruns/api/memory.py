"""API routes for an agent's memory, as the web UI's Memory panel uses them.

A minimal copy for the UI branch (issue 15); the CLI/API branch has the same routes
with the same shape: keep one at merge. Memory is the notes of the `memory` tool:
`key` is a note's id, `value` its text.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request

from everruns.api.problems import Problem

_AGENT = Path(max_length=128)
_KEY = Path(max_length=64)


def add_memory_routes(app: FastAPI, auth: list[Any]) -> None:
    @app.get("/v1/agents/{name}/memory", tags=["agents"], dependencies=auth)
    async def list_memory(name: Annotated[str, _AGENT], request: Request) -> dict[str, Any]:
        """What the agent's runs remembered (oldest first)."""
        notes = await request.app.state.store.recall(name, limit=1000)
        return {
            "items": [{"key": n["id"], "value": n["text"], "updated_at": n["ts"]} for n in notes]
        }

    @app.delete(
        "/v1/agents/{name}/memory/{key}", tags=["agents"], status_code=204, dependencies=auth
    )
    async def delete_memory(
        name: Annotated[str, _AGENT], key: Annotated[str, _KEY], request: Request
    ) -> None:
        if not await request.app.state.store.forget(name, key):
            raise Problem(
                404, "memory-not-found", "Not found", f"agent {name!r} has no memory {key!r}"
            )

    @app.delete("/v1/agents/{name}/memory", tags=["agents"], status_code=204, dependencies=auth)
    async def clear_memory(name: Annotated[str, _AGENT], request: Request) -> None:
        await request.app.state.store.forget(name)
