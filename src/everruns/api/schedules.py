"""API routes for schedules and agent memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from everruns.api.problems import Problem
from everruns.spec import AgentSpec
from everruns.store import Store, StoreError

_AGENT = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ScheduleCreate(BaseModel):
    """Schedule a stored agent (`agent`, optionally pinned to `version`; default: its
    latest version at each fire) or an inline spec (`spec` or `yaml`; its version is
    stored and pinned). `schedule`, `input` and `overlap` default to the spec's
    `schedule`, `schedule_input` and `schedule_overlap`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    agent: str | None = Field(default=None, max_length=128)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    spec: dict[str, Any] | None = None
    yaml: str | None = Field(default=None, max_length=1_000_000)
    schedule: str | None = Field(
        default=None,
        max_length=255,
        description="cron (5 fields, or 6 with seconds first) or `every <duration>`, UTC",
    )
    input: str | None = Field(default=None, max_length=1_000_000)
    overlap: Literal["skip", "queue", "cancel_previous"] | None = None
    enabled: bool = True


class ScheduleOut(BaseModel):
    agent: str
    expression: str
    agent_version: int | Literal["latest"]
    overlap: str
    input: str | None
    enabled: bool
    next_fire_at: float
    last_fired_at: float | None
    last_run_id: str | None
    created_at: float
    updated_at: float


class NoteOut(BaseModel):
    id: str
    agent: str
    run_id: str | None
    text: str
    ts: float


def _invalid(field: str, message: str) -> Problem:
    return Problem(
        422,
        "validation-error",
        "Invalid request",
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def _not_found(agent: str) -> Problem:
    return Problem(
        404, "schedule-not-found", "Schedule not found", f"no schedule for agent {agent!r}"
    )


def add_schedule_routes(
    app: FastAPI,
    auth: list[Any],
    checked: Callable[[Store, dict[str, Any] | None, str | None], Awaitable[AgentSpec]],
) -> None:
    def store_of(request: Request) -> Store:
        return request.app.state.store

    @app.get("/v1/schedules", tags=["schedules"], dependencies=auth)
    async def list_schedules(request: Request) -> list[ScheduleOut]:
        return [ScheduleOut(**s) for s in await store_of(request).list_schedules()]

    @app.post("/v1/schedules", tags=["schedules"], status_code=201, dependencies=auth)
    async def put_schedule(body: ScheduleCreate, request: Request) -> ScheduleOut:
        """Create or replace an agent's schedule."""
        store = store_of(request)
        given = [k for k in ("agent", "spec", "yaml") if getattr(body, k) is not None]
        if len(given) != 1:
            raise _invalid("agent", "give exactly one of `agent`, `spec` or `yaml`")
        pinned: int | None
        if body.agent is not None:
            try:
                spec = await store.get_agent(body.agent, body.version)
            except StoreError as exc:
                raise Problem(404, "agent-not-found", "Agent not found", str(exc)) from None
            pinned = body.version
        else:
            if body.version is not None:
                raise _invalid("version", "only with `agent` (an inline spec is pinned)")
            spec = await checked(store, body.spec, body.yaml)
            pinned = await store.save_agent(spec, origin="api")
        expression = body.schedule or spec.schedule
        if not expression:
            raise _invalid("schedule", "missing: give `schedule` or a spec with a `schedule`")
        try:
            saved = await store.put_schedule(
                spec.name,
                expression,
                agent_version=pinned,
                input=body.input if "input" in body.model_fields_set else spec.schedule_input,
                overlap=body.overlap or spec.overlap,
                enabled=body.enabled,
            )
        except StoreError as exc:
            field, _, message = str(exc).partition(": ")
            if field in ("schedule", "schedule_overlap") and message:
                raise _invalid(field, message) from None
            raise
        return ScheduleOut(**saved)

    @app.get("/v1/schedules/{agent}", tags=["schedules"], dependencies=auth)
    async def get_schedule(agent: Annotated[str, _AGENT], request: Request) -> ScheduleOut:
        found = await store_of(request).get_schedule(agent)
        if found is None:
            raise _not_found(agent)
        return ScheduleOut(**found)

    @app.delete("/v1/schedules/{agent}", tags=["schedules"], status_code=204, dependencies=auth)
    async def delete_schedule(agent: Annotated[str, _AGENT], request: Request) -> None:
        if not await store_of(request).delete_schedule(agent):
            raise _not_found(agent)

    @app.post("/v1/schedules/{agent}/pause", tags=["schedules"], dependencies=auth)
    async def pause_schedule(agent: Annotated[str, _AGENT], request: Request) -> ScheduleOut:
        found = await store_of(request).set_schedule_enabled(agent, False)
        if found is None:
            raise _not_found(agent)
        return ScheduleOut(**found)

    @app.post("/v1/schedules/{agent}/resume", tags=["schedules"], dependencies=auth)
    async def resume_schedule(agent: Annotated[str, _AGENT], request: Request) -> ScheduleOut:
        found = await store_of(request).set_schedule_enabled(agent, True)
        if found is None:
            raise _not_found(agent)
        return ScheduleOut(**found)

    @app.get("/v1/agents/{name}/notes", tags=["agents"], dependencies=auth)
    async def agent_notes(
        name: Annotated[str, _AGENT],
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[NoteOut]:
        """The agent's memory (notes kept by the `memory` tool): the newest, oldest first."""
        return [NoteOut(**n) for n in await store_of(request).recall(name, limit=limit)]
