"""Commands that touch no run: `validate` a spec, `db upgrade` the schema."""

from __future__ import annotations

import typer

from everruns.cli.common import DbOption, SpecArgument, load_checked, out, run_async
from everruns.cli.local import LocalBackend

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def validate(spec: SpecArgument, db: DbOption = None) -> None:
    """Check an agent spec, its tools and its credentials' bindings without running anything."""

    async def go() -> None:
        loaded = await load_checked(spec, db)
        out.print(
            f"ok: agent {loaded.name} ({loaded.model.label}, {len(loaded.tools)} tool entries)"
        )

    run_async(go)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply database migrations (the CLI also does this on every start)."""

    async def go() -> None:
        async with LocalBackend.open(db, create=True):
            pass
        out.print("database is up to date")

    run_async(go)
