"""What every command shares: the options, the two consoles, and one place that turns
errors into a message and an exit code (never a traceback, unless `everruns --debug`).

Exit codes: 0 ok, 1 a failed operation (a failed run, an unknown id, a refused request),
2 a usage or spec error, 3 the database cannot be reached or opened.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape

from everruns.client import ApiError
from everruns.spec import AgentSpec, SpecError, load_spec
from everruns.store import RunNotFound, StoreError
from everruns.store.database import DatabaseUnavailable, DatabaseURLError
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
RunIdArgument = Annotated[
    str, typer.Argument(help="Run id, or any unique start of one (`run_` may be left out).")
]
SpecArgument = Annotated[Path, typer.Argument(help="Agent spec (YAML).")]


EXIT_FAILED, EXIT_USAGE, EXIT_DATABASE = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def no_schedule(agent: str) -> CliError:
    """Both back ends' words for a missing schedule."""
    return CliError(f"no schedule for agent {agent!r}")


class Debug:
    """`everruns --debug` (or EVERRUNS_DEBUG=1): print the traceback behind an error."""

    enabled = False


def _failure(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an error a command ended with."""
    if isinstance(exc, SpecError):
        return EXIT_USAGE, f"invalid agent spec\n{exc}"
    if isinstance(exc, DatabaseURLError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DatabaseUnavailable):
        return EXIT_DATABASE, str(exc)
    if isinstance(exc, RunNotFound | StoreError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, ApiError):
        return (EXIT_USAGE if exc.status == 422 else EXIT_FAILED), exc.detail or str(exc)
    if isinstance(exc, httpx.TransportError):
        return EXIT_FAILED, f"cannot reach the server: {exc}; check --server and that it runs"
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        reason = " ".join(str(exc.orig or exc).split())
        return EXIT_DATABASE, f"the database failed: {reason}; check that it is running"
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}: {exc}\n"
        "run `everruns --debug ...` for the traceback, and please report it"
    )


def fail(exc: BaseException) -> typer.Exit:
    """Print what went wrong (and, with --debug, the traceback); the exit to raise."""
    code, message = _failure(exc)
    if Debug.enabled:
        traceback.print_exception(exc, file=sys.stderr)
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(code)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; every failure becomes a message and an exit code
    (see the module's docstring), never a traceback."""
    try:
        return asyncio.run(factory())
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise fail(exc) from None


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
    return typer.Exit(EXIT_USAGE)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def install_stop_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
