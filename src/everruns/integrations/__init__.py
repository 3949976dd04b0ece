"""Agents written in other frameworks, run durably on everruns.

`everruns.integrations.pydantic_ai` (EverrunsAgent) and
`everruns.integrations.openai_agents` (EverrunsRunner). Each adapter routes the
framework's model requests and tool calls through `everruns.engine.framework`, which
journals and replays them; see docs/integrations/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from everruns.engine import framework
from everruns.engine.framework import FrameworkSession
from everruns.spec import EFFECTS, AgentSpec

F = TypeVar("F", bound=Callable[..., Any])

EFFECT_ATTR = "__everruns_effect__"


def everruns_tool(*, effect: str) -> Callable[[F], F]:
    """Declare a framework tool's effect class: `pure`, `idempotent` (run again after a
    crash, with the same idempotency key) or `at_most_once` (the default: never run
    again; an interrupted call becomes "outcome unknown"). Put it above or below the
    framework's own tool decorator."""
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {', '.join(EFFECTS)}, not {effect!r}")

    def mark(fn: F) -> F:
        setattr(fn, EFFECT_ATTR, effect)
        return fn

    return mark


def declared_effect(fn: Any) -> str | None:
    return getattr(fn, EFFECT_ATTR, None)


class EverrunsRunError(Exception):
    """An in-process framework run did not complete (failed, cancelled, or parked)."""

    def __init__(self, run_id: str, status: str, error: dict[str, Any] | None):
        detail = (error or {}).get("message", "")
        super().__init__(f"run {run_id} ended {status}: {detail}")
        self.run_id = run_id
        self.status = status
        self.error = error


def default_db() -> str:
    """The database of in-process framework runs: EVERRUNS_DATABASE_URL, else the CLI's
    default (sqlite:///.everruns/everruns.db)."""
    import os
    from pathlib import Path

    url = os.environ.get("EVERRUNS_DATABASE_URL")
    if url:
        return url
    Path(".everruns").mkdir(exist_ok=True)
    return "sqlite:///.everruns/everruns.db"


async def run_in_process(
    spec: AgentSpec,
    input: str | None,
    *,
    run_id: str | None,
    db: str | None,
    timeout: float | None,
    execute: Callable[[Any, FrameworkSession], Awaitable[str]],
    deps: Any = None,
    what: str = "deps",
) -> Any:
    """Create (or find, by `run_id`) the run, execute it in this process until it ends,
    and return the framework's result object; a run that finished elsewhere is rebuilt
    by replaying its journal (no model or tool is called). `deps`: the caller's per-run
    dependencies as JSON (see everruns.integrations.deps), journaled in run.created; an
    existing run created with other ones is refused (ValueError)."""
    from everruns.integrations.deps import check_resumed
    from everruns.settings import Settings
    from everruns.store import Store
    from everruns.testing.runs import run_to_end

    store = await Store.open(db or default_db())
    try:
        created = {"deps": deps} if deps is not None else None
        rid = await store.create_run(spec, input, run_id=run_id, created_data=created)
        await check_resumed(store, rid, deps, what)
        framework.expect(rid)
        try:
            await run_to_end(store, rid, timeout=timeout or 3600)
        finally:
            output = framework.take(rid)
        row = await store.get_run(rid)
        if row.status != "completed":
            raise EverrunsRunError(rid, row.status, row.error)
        if output is None:
            assert spec.agent is not None
            events = await store.load_events(rid)
            session = FrameworkSession(None, rid, spec, Settings(), events)
            await execute(framework.resolve(spec.agent.python), session)
            output = session.output
        return output
    finally:
        await store.close()
