"""What every command shares: the options, the two consoles, and one place that turns
errors into a message and an exit code (never a traceback)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from everruns.client import ApiError
from everruns.spec import AgentSpec, SpecError, load_spec
from everruns.store import RunNotFound, StoreError
from everruns.store.database import DatabaseURLError
from everruns.tools.registry import ToolSpecError, build_tools

out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
T = TypeVar("T")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EVERRUNS_DATABASE_URL",
        help="Database URL (sqlite:///path or postgresql://...). "
        "Default: sqlite:///.everruns/everruns.db",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="EVERRUNS_SERVER",
        help="Talk to an everruns server (http://host:port) instead of the database.",
    ),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="EVERRUNS_TOKEN", help="API token for --server.")
]
InputOption = Annotated[str | None, typer.Option("--input", "-i", help="The user message.")]
LeaseOption = Annotated[float, typer.Option("--lease-ttl", help="Lease time-to-live, seconds.")]
RunIdArgument = Annotated[str, typer.Argument(help="Run id.")]
SpecArgument = Annotated[Path, typer.Argument(help="Agent spec (YAML).")]


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; every expected failure becomes one line and an exit code
    (2: a bad spec or request, 1: anything else)."""
    try:
        return asyncio.run(factory())
    except SpecError as exc:
        err.print(f"[red]error:[/] invalid agent spec\n{escape(str(exc))}")
        raise typer.Exit(2) from None
    except (RunNotFound, StoreError, DatabaseURLError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except CliError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exc.code) from None
    except ApiError as exc:
        err.print(f"[red]error:[/] {escape(exc.detail or str(exc))}")
        raise typer.Exit(2 if exc.status == 422 else 1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]error:[/] cannot reach the server: {escape(str(exc))}")
        raise typer.Exit(1) from None


async def load_checked(path: Path, db: str | None = None) -> AgentSpec:
    """Load a spec and its tools, so a bad spec fails before any run exists. A local
    spec may use every tool kind; its credentials must still be bound (settings, or
    stored secrets in the database when it names one settings does not bind)."""
    from everruns.credentials import models_of
    from everruns.policy import check_spec
    from everruns.providers.pricing import pricing_warning, unpriced_models
    from everruns.settings import load_settings
    from everruns.store import Store

    spec = load_spec(path)
    settings = load_settings()
    stored: dict[str, list[str]] = {}
    if any(
        m.credential is not None and m.credential not in settings.credentials
        for _, m in models_of(spec)
    ):
        store = await Store.open(db)
        try:
            stored = await store.secret_bindings()
        finally:
            await store.close()
    try:
        check_spec(spec, "local", settings, stored)
        build_tools(spec, allow_private_networks=settings.allow_private_networks)
    except ToolSpecError as exc:
        raise SpecError(str(path), [(exc.field, exc.message)]) from None
    for model in unpriced_models(spec, settings.prices):
        err.print(f"[yellow]warning:[/] {pricing_warning(model)}", highlight=False)
    return spec


def usage_error(message: str) -> typer.Exit:
    """A bad command line: the message, exit code 2."""
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def install_stop_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
