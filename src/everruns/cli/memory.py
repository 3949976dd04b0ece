"""`everruns memory ...`: what an agent remembers across runs (its `memory` tool's notes),
listed, forgotten one by one or cleared; against the database or an `everruns server`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    DbOption,
    JsonOption,
    ServerOption,
    TokenOption,
    out,
    print_json,
    run_async,
)
from everruns.render import format_status_time

memory_app = typer.Typer(help="Agent memory: the notes an agent keeps across runs.")
AgentArgument = Annotated[str, typer.Argument(help="Agent name.")]
KeyArgument = Annotated[str, typer.Argument(help="The note's key (see `everruns memory ls`).")]


@memory_app.command("ls")
def memory_ls(
    agent: AgentArgument,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List an agent's notes, oldest first."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            items = await backend.list_memory(agent)
        if json_out:
            print_json([i.model_dump() for i in items])
            return
        if not items:
            out.print(f"agent {agent} remembers nothing")
            return
        table = Table("key", "updated", "run", "value")
        for item in items:
            table.add_row(
                item.key, format_status_time(item.updated_at), item.run_id or "-", item.value
            )
        out.print(table)

    run_async(go)


@memory_app.command("rm")
def memory_rm(
    agent: AgentArgument,
    key: KeyArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Forget one note; later runs of the agent no longer see it."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            await backend.delete_memory(agent, key)
        out.print(f"forgot {key} of {agent}")

    run_async(go)


@memory_app.command("clear")
def memory_clear(
    agent: AgentArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Forget every note of an agent."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            count = await backend.clear_memory(agent)
        out.print(f"forgot {count} notes of {agent}")

    run_async(go)
