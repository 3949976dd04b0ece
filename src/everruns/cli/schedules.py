"""`everruns schedule ...`: cron or `every <duration>` schedules of an agent (UTC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    DbOption,
    JsonOption,
    ServerOption,
    TokenOption,
    load_checked,
    out,
    print_json,
    run_async,
)
from everruns.cli.views import fitted_table
from everruns.render import format_status_time
from everruns.spec import SpecError

schedule_app = typer.Typer(
    help="Scheduled runs (cron or `every <duration>`, UTC).", no_args_is_help=True
)
AgentArgument = Annotated[str, typer.Argument(help="Agent name.")]
SCHEDULE_COLUMNS = ("agent", "version", "schedule", "overlap", "state", "next", "last run")
SCHEDULE_PRIORITY = ("agent", "last run", "schedule", "state", "next", "version", "overlap")


def _schedule_line(s: dict[str, Any]) -> str:
    version = s["agent_version"] if s["agent_version"] == "latest" else f"v{s['agent_version']}"
    state = "enabled" if s["enabled"] else "paused"
    return (
        f"{s['agent']} ({version})  {s['expression']!r}  overlap {s['overlap']}  {state}  "
        f"next {format_status_time(s['next_fire_at'])}"
    )


@schedule_app.command("add")
def schedule_add(
    spec: Annotated[Path, typer.Argument(help="Agent spec (YAML) with a `schedule`.")],
    latest: Annotated[
        bool, typer.Option("--latest", help="Run the agent's latest version at each fire.")
    ] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Store the agent version and schedule it (replaces the agent's schedule)."""

    async def go() -> None:
        loaded = await load_checked(spec, None if server else db)
        if not loaded.schedule:
            raise SpecError(
                str(spec),
                [("schedule", 'missing: e.g. `schedule: "0 9 * * *"` or `every 1h`')],
            )
        async with open_backend(db, server, token, create=True) as backend:
            saved = await backend.add_schedule(loaded, latest=latest)
        if json_out:
            print_json(saved)
        else:
            out.print(f"scheduled {_schedule_line(saved)}")

    run_async(go)


@schedule_app.command("ls")
def schedule_ls(
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List schedules."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            items = await backend.list_schedules()
        if json_out:
            print_json(items)
            return
        rows = [
            {
                "agent": sc["agent"],
                "version": str(sc["agent_version"]),
                "schedule": sc["expression"],
                "overlap": sc["overlap"],
                "state": "enabled" if sc["enabled"] else "paused",
                "next": format_status_time(sc["next_fire_at"]) if sc["enabled"] else "-",
                "last run": sc["last_run_id"] or "-",
            }
            for sc in items
        ]
        out.print(fitted_table(rows, SCHEDULE_COLUMNS, SCHEDULE_PRIORITY, out.width))

    run_async(go)


@schedule_app.command("rm")
def schedule_rm(
    agent: AgentArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Remove an agent's schedule (its runs are left alone)."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            await backend.delete_schedule(agent)
        out.print(f"removed the schedule of {agent}")

    run_async(go)


def _set_schedule(
    agent: str, enabled: bool, db: str | None, server: str | None, token: str | None
) -> None:
    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            found = await backend.set_schedule_enabled(agent, enabled)
        out.print(f"{'resumed' if enabled else 'paused'} {_schedule_line(found)}")

    run_async(go)


@schedule_app.command("pause")
def schedule_pause(
    agent: AgentArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Stop firing an agent's schedule until resumed."""
    _set_schedule(agent, False, db, server, token)


@schedule_app.command("resume")
def schedule_resume(
    agent: AgentArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Fire an agent's schedule again, from its next tick (paused ticks are not caught up)."""
    _set_schedule(agent, True, db, server, token)
