"""`everruns token ...`: API tokens, shown once, stored as hashes."""

from __future__ import annotations

from typing import Annotated

import typer

from everruns.cli.common import CliError, DbOption, err, out, run_async
from everruns.cli.local import LocalBackend

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")],
    db: DbOption = None,
) -> None:
    """Create an API token; it is shown once (only its hash is stored)."""

    async def go() -> None:
        async with LocalBackend.open(db) as local:
            token_id, plaintext = await local.store.create_token(name)
        err.print(f"token {token_id} ({name}); store it now, it is not shown again:")
        out.print(plaintext)

    run_async(go)


@token_app.command("ls")
def token_ls(db: DbOption = None) -> None:
    """List API tokens (never their values)."""

    async def go() -> None:
        async with LocalBackend.open(db) as local:
            for t in await local.store.list_tokens():
                out.print(f"{t['id']}  {t['name']}  {'revoked' if t['revoked'] else 'active'}")

    run_async(go)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Revoke an API token."""

    async def go() -> None:
        async with LocalBackend.open(db) as local:
            if not await local.store.revoke_token(token_id):
                raise CliError(f"no token {token_id!r}")
        out.print(f"revoked {token_id}")

    run_async(go)
