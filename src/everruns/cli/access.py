"""`everruns token ...`: API tokens, shown once, stored as hashes; `everruns secret ...`:
stored secrets, encrypted, each bound to the URLs it may be sent to."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    CliError,
    DbOption,
    ServerOption,
    TokenOption,
    err,
    out,
    run_async,
    usage_error,
)
from everruns.cli.local import LocalBackend

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")],
    db: DbOption = None,
) -> None:
    """Create an API token; it is shown once (only its hash is stored)."""

    async def go() -> None:
        async with LocalBackend.open(db, create=True) as local:
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


secret_app = typer.Typer(
    help="Stored secrets (encrypted), each bound to the URLs it may be sent to.",
    no_args_is_help=True,
)


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help="The credential name specs use.")],
    value: Annotated[
        str | None,
        typer.Option("--value", help="The secret; default: read from standard input."),
    ] = None,
    allow_url: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-url",
            help="A URL pattern the secret may be sent to (repeatable), "
            "e.g. 'https://api.openai.com/*'.",
        ),
    ] = None,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Store a secret for `model.credential: NAME`, bound to the --allow-url patterns.

    A spec can use it only at a matching URL; it is encrypted with EVERRUNS_MASTER_KEY
    (the server's, with --server).
    """
    from everruns.settings import check_url_pattern

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}", name):
        raise usage_error(f"{name!r} is not a secret name (letters, digits, _ . -)")
    patterns = list(allow_url or [])
    if not patterns:
        raise usage_error(
            "give at least one --allow-url (a secret bound to no URL is usable nowhere)"
        )
    try:
        patterns = [check_url_pattern(p) for p in patterns]
    except ValueError as exc:
        raise usage_error(f"--allow-url: {exc}") from None
    secret = value if value is not None else sys.stdin.read().strip()
    if not secret:
        raise usage_error("the secret is empty (give --value or pipe it on standard input)")

    async def go() -> None:
        async with open_backend(db, server, token, create=True) as backend:
            await backend.put_secret(name, secret, patterns)
        out.print(f"stored secret {name} (may be sent to: {', '.join(patterns)})")

    run_async(go)


@secret_app.command("ls")
def secret_ls(db: DbOption = None, server: ServerOption = None, token: TokenOption = None) -> None:
    """List stored secrets and their allowed URLs (never their values; a server gives
    names only)."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            bindings = await backend.list_secrets()
        for name, urls in sorted(bindings.items()):
            if urls is None:
                out.print(name)
            else:
                out.print(f"{name}  {' '.join(urls) or '(bound to no URL: unusable)'}")

    run_async(go)
