"""The `everruns` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from everruns.api.wire import run_from_api, run_to_api
from everruns.client import ApiError, Client
from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES, EventType
from everruns.core.state import fold
from everruns.engine.worker import Worker
from everruns.render import format_event, format_status_time
from everruns.spec import AgentSpec, SpecError, load_spec
from everruns.store import RunNotFound, RunRow, Store, StoreError
from everruns.store.database import DatabaseURLError
from everruns.tools.registry import ToolSpecError, build_tools

app = typer.Typer(
    help="Durable execution for long-lived AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

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


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
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


async def _call(fn: Callable[[], T]) -> T:
    return fn()


async def _load_checked(path: Path, db: str | None = None) -> AgentSpec:
    """Load a spec and its tools, so a bad spec fails before any run exists. A local
    spec may use every tool kind; its credentials must still be bound (settings, or
    stored secrets in the database when it names one settings does not bind)."""
    from everruns.credentials import models_of
    from everruns.policy import check_spec
    from everruns.settings import load_settings

    spec = load_spec(path)
    settings = load_settings()
    stored: dict[str, list[str]] = {}
    if any(
        m.credential is not None and m.credential not in settings.credentials
        for _, m in models_of(spec)
    ):
        stored = await _with_store(db, lambda s: s.secret_bindings())
    try:
        check_spec(spec, "local", settings, stored)
        build_tools(spec, allow_private_networks=settings.allow_private_networks)
    except ToolSpecError as exc:
        raise SpecError(str(path), [(exc.field, exc.message)]) from None
    return spec


async def _with_store(db: str | None, fn: Callable[[Store], Awaitable[T]]) -> T:
    store = await Store.open(db)
    try:
        return await fn(store)
    finally:
        await store.close()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _install_stop_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


# ------------------------------------------------------------------ commands


@app.command()
def validate(
    spec: Annotated[Path, typer.Argument(help="Agent spec (YAML).")], db: DbOption = None
) -> None:
    """Check an agent spec, its tools and its credentials' bindings without running anything."""

    async def go() -> None:
        loaded = await _load_checked(spec, db)
        out.print(
            f"ok: agent {loaded.name} ({loaded.model.label}, {len(loaded.tools)} tool entries)"
        )

    _run_async(go)


@app.command()
def start(
    spec: Annotated[Path, typer.Argument(help="Agent spec (YAML).")],
    input: InputOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Queue a new run and print its id; a worker executes it."""

    async def go() -> None:
        loaded = await _load_checked(spec, None if server else db)
        if server:
            with Client(server, token) as client:
                run_id = client.runs.start(spec=loaded.to_dict(), input=input).id
        else:
            run_id = await _with_store(db, lambda s: s.create_run(loaded, input))
        if json_out:
            _print_json({"id": run_id, "status": "queued", "agent": loaded.name})
        else:
            out.print(run_id, highlight=False)

    _run_async(go)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Agent spec (YAML).")],
    input: InputOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    lease_ttl: LeaseOption = 15.0,
) -> None:
    """Run an agent in this process and show its progress live.

    The run is durable like any other: if this process dies, `everruns worker`
    continues it. Exit code 0 when it completes, 1 when it fails or is cancelled.
    """

    async def go() -> int:
        loaded = await _load_checked(spec, db)
        store = await Store.open(db)
        try:
            run_id = await store.create_run(loaded, input)
            return await _run_in_process(store, run_id, json_out, lease_ttl)
        finally:
            await store.close()

    code = _run_async(go)
    raise typer.Exit(code)


async def _run_in_process(store: Store, run_id: str, json_out: bool, lease_ttl: float) -> int:
    worker = Worker(store, concurrency=8, lease_ttl=lease_ttl, only=[run_id], poll_interval=0.2)
    queue = worker.broker.subscribe(run_id)
    _install_stop_handlers(worker.stop)
    worker_task = asyncio.create_task(worker.run())
    for created in await store.load_events(run_id):
        record = {"run_id": run_id, **created.to_dict()}
        if json_out:
            _print_json(record)
        else:
            out.print(format_event(record))
    streaming = False
    status = "queued"
    try:
        while True:
            get = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({get, worker_task}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            event = get.result()
            if event.get("ephemeral"):
                if not json_out and event["type"] == "llm.delta":
                    out.print(event["data"]["text"], end="", style="cyan", highlight=False)
                    streaming = True
                continue
            if json_out:
                _print_json(event)
            else:
                if streaming:
                    out.print()
                    streaming = False
                out.print(format_event(event), highlight=False)
            if event["type"] in TERMINAL_EVENTS:
                status = event["type"].split(".")[1]
                break
    finally:
        worker.stop()
        await worker_task
    if status == "queued":  # stopped by a signal before the run ended
        if not json_out:
            err.print(f"stopped; the run continues on any worker: everruns status {run_id}")
        return 130
    return 0 if status == "completed" else 1


@app.command()
def worker(
    db: DbOption = None,
    concurrency: Annotated[int, typer.Option(help="Runs executed at once.")] = 16,
    lease_ttl: LeaseOption = 15.0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between claims when idle.")] = 0.5,
    max_crashes: Annotated[
        int, typer.Option(help="Fail a run after this many workers died on it without progress.")
    ] = 5,
    shutdown_grace: Annotated[
        float, typer.Option(help="On SIGTERM, seconds to let in-flight atoms finish.")
    ] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Execute queued runs until stopped (SIGTERM/SIGINT release the leases)."""
    from everruns.engine.hardening import harden

    harden()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def go() -> None:
        store = await Store.open(db)
        w = Worker(
            store,
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_crashes=max_crashes,
            shutdown_grace=shutdown_grace,
            on_claim=lambda c: logging.getLogger("everruns.worker").info(
                "claimed %s (epoch %d)", c.run_id, c.epoch
            ),
        )
        _install_stop_handlers(w.stop)
        logging.getLogger("everruns.worker").info(
            "worker %s started (concurrency %d, lease %gs)", w.worker_id, concurrency, lease_ttl
        )
        try:
            await w.run()
        finally:
            await store.close()
        logging.getLogger("everruns.worker").info("worker %s stopped", w.worker_id)

    _run_async(go)


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Show a run's status, steps, usage and result."""

    async def go() -> None:
        if server:
            with Client(server, token) as client:
                row = run_from_api(client.runs.get(run_id).model_dump())
        else:
            row = await _with_store(db, lambda s: s.get_run(run_id))
        if json_out:
            _print_json(run_to_api(row))
            return
        _print_status(row)

    _run_async(go)


def _print_status(row: RunRow) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("id", row.id)
    table.add_row("agent", f"{row.agent_name} v{row.agent_version}")
    table.add_row("status", row.status)
    if row.status == "waiting":
        table.add_row("wakes", format_status_time(row.wake_at) if row.wake_at else "on a signal")
    table.add_row("steps", str(row.steps))
    table.add_row(
        "usage",
        f"{row.input_tokens} in + {row.output_tokens} out tokens, ${row.cost_usd:.4f}",
    )
    table.add_row("created", format_status_time(row.created_at))
    if row.result is not None:
        table.add_row("result", row.result)
    if row.error:
        table.add_row("error", f"{row.error.get('reason')}: {row.error.get('message')}")
    out.print(table)


@app.command()
def events(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
    json_out: JsonOption = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait for new events until the run ends.")
    ] = False,
    after: Annotated[int, typer.Option(help="Only events with seq greater than this.")] = 0,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Print a run's journal."""

    def show(record: dict[str, Any]) -> None:
        if json_out:
            _print_json(record)
        else:
            out.print(format_event(record), highlight=False)

    async def remote() -> None:
        assert server is not None
        with Client(server, token) as client:
            client.runs.get(run_id)
            if follow:
                for event in client.runs.stream(run_id, after=after, include_ephemeral=False):
                    show(event.model_dump(exclude={"ephemeral"}))
            else:
                for event in client.runs.events(run_id, after=after):
                    show(event.model_dump(exclude={"ephemeral"}))

    async def go() -> None:
        if server:
            await remote()
            return
        store = await Store.open(db)
        try:
            await store.get_run(run_id)
            last = after
            while True:
                batch = await store.load_events(run_id, after=last)
                for event in batch:
                    record = {"run_id": run_id, **event.to_dict()}
                    if json_out:
                        _print_json(record)
                    else:
                        out.print(format_event(record), highlight=False)
                    last = event.seq
                    if follow and event.type in TERMINAL_EVENTS:
                        return
                if not follow:
                    return
                if not batch:
                    row = await store.get_run(run_id)
                    if row.status in TERMINAL_STATUSES and row.last_seq <= last:
                        return
                    await asyncio.sleep(0.2)
        finally:
            await store.close()

    _run_async(go)


@app.command("ls")
def list_runs(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List runs, newest first."""
    valid = ("queued", "running", "waiting", "paused", "completed", "failed", "cancelled")
    if status is not None and status not in valid:
        err.print(f"[red]error:[/] --status must be one of {', '.join(valid)}")
        raise typer.Exit(2)

    async def go() -> None:
        if server:
            with Client(server, token) as client:
                items, _ = client.runs.list(status=status, agent=agent, limit=limit)
            rows = [run_from_api(r.model_dump()) for r in items]
        else:
            rows = await _with_store(
                db, lambda s: s.list_runs(status=status, agent=agent, limit=limit)
            )
        if json_out:
            _print_json([run_to_api(r) for r in rows])
            return
        table = Table("id", "agent", "status", "steps", "tokens", "cost", "created")
        for r in rows:
            table.add_row(
                r.id,
                r.agent_name,
                r.status,
                str(r.steps),
                str(r.input_tokens + r.output_tokens),
                f"${r.cost_usd:.4f}",
                format_status_time(r.created_at),
            )
        out.print(table)

    _run_async(go)


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running run to stop.")] = 30.0,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a run, stopping its in-flight LLM call and tools."""

    async def remote() -> None:
        assert server is not None
        with Client(server, token) as client:
            outcome = client.runs.cancel(run_id)
            deadline = time.monotonic() + wait
            while outcome == "requested" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                current = client.runs.get(run_id)
                if current.done:
                    outcome = current.status
            out.print(f"run {run_id} {outcome}")

    async def go() -> None:
        if server:
            await remote()
            return
        store = await Store.open(db)
        try:
            outcome = await store.cancel(run_id)
            if outcome in ("completed", "failed", "cancelled"):
                out.print(f"run {run_id} already {outcome}")
                return
            deadline = time.monotonic() + wait
            while outcome == "requested" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                row = await store.get_run(run_id)
                if row.status in TERMINAL_STATUSES:
                    outcome = row.status
                elif row.lease_owner is None or (row.lease_expires_at or 0) < time.time():
                    outcome = await store.cancel(run_id)
            if outcome == "requested":
                out.print(f"cancel requested for {run_id}; its worker will stop it")
            else:
                out.print(f"run {run_id} {outcome}")
        finally:
            await store.close()

    _run_async(go)


async def _pending_approval(store: Store, run_id: str, call_id: str) -> None:
    state = fold(await store.load_events(run_id))
    pending = [c.id for c in state.calls if c.approval == "requested"]
    if call_id not in pending:
        known = ", ".join(pending) or "none"
        raise CliError(
            f"run {run_id} has no pending approval for call {call_id!r} (pending: {known})"
        )


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    call_id: Annotated[str, typer.Argument(help="Tool call id (see `everruns events`).")],
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Approve a tool call that waits for a human; the run continues on any worker."""
    if server:
        with Client(server, token) as client:
            _run_async(lambda: _call(lambda: client.runs.approve(run_id, call_id)))
        out.print(f"approved {call_id} of {run_id}")
        return

    async def go(store: Store) -> None:
        await _pending_approval(store, run_id, call_id)
        await store.signal(run_id, EventType.APPROVAL_GRANTED, {"call_id": call_id})
        out.print(f"approved {call_id} of {run_id}")

    _run_async(lambda: _with_store(db, go))


@app.command()
def deny(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    call_id: Annotated[str, typer.Argument(help="Tool call id (see `everruns events`).")],
    reason: Annotated[str, typer.Option(help="Why; the model sees it.")] = "",
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Deny a tool call that waits for a human; the model sees the denial as the tool's result."""
    if server:
        with Client(server, token) as client:
            _run_async(lambda: _call(lambda: client.runs.deny(run_id, call_id, reason)))
        out.print(f"denied {call_id} of {run_id}")
        return

    async def go(store: Store) -> None:
        await _pending_approval(store, run_id, call_id)
        await store.signal(
            run_id, EventType.APPROVAL_DENIED, {"call_id": call_id, "reason": reason}
        )
        out.print(f"denied {call_id} of {run_id}")

    _run_async(lambda: _with_store(db, go))


@app.command()
def message(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    text: Annotated[str, typer.Argument(help="The message.")],
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Send a user message into a run; a finished run starts a new turn."""
    if server:
        with Client(server, token) as client:
            event = _run_async(lambda: _call(lambda: client.runs.message(run_id, text)))
        out.print(f"message journaled as seq {event.seq} of {run_id}")
        return

    async def go(store: Store) -> None:
        event = await store.signal(run_id, EventType.MESSAGE_USER, {"content": text})
        out.print(f"message journaled as seq {event.seq} of {run_id}")

    _run_async(lambda: _with_store(db, go))


@app.command()
def workspace(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    export: Annotated[
        Path | None, typer.Option("--export", help="Write the files into DIR.")
    ] = None,
    db: DbOption = None,
) -> None:
    """List a run's workspace files (as journaled), or export them into a directory."""
    from everruns.tools.workspace import export_files

    async def go(store: Store) -> None:
        await store.get_run(run_id)
        state = fold(await store.load_events(run_id))
        if export is None:
            for path, sha in sorted(state.files.items()):
                out.print(f"{sha[:12]}  {path}")
            return
        export.mkdir(parents=True, exist_ok=True)
        count = await export_files(store, state.files, export)
        out.print(f"exported {count} files to {export}")

    _run_async(lambda: _with_store(db, go))


@app.command()
def server(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; workers run elsewhere.")
    ] = False,
    auth: Annotated[
        bool,
        typer.Option("--auth", envvar="EVERRUNS_AUTH", help="Require API tokens on loopback too."),
    ] = False,
    lease_ttl: LeaseOption = 15.0,
    concurrency: Annotated[int, typer.Option(help="Embedded worker concurrency.")] = 16,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="A browser origin (https://app.example) allowed to make state-changing "
            "requests; repeatable; needs auth.",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API and web UI, with an embedded worker unless --no-worker.

    Auth (API tokens, `everruns token create`) is always required on a non-loopback address.
    With auth off, only requests addressed to 127.0.0.1, localhost or [::1] are served, and
    cross-site browser requests that change anything are refused (see docs/security.md).
    """
    import ipaddress

    import uvicorn

    from everruns.api import ApiConfig, create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    origins = tuple(cors_origin or ())
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") != 2:
            err.print(
                f"[red]error:[/] --cors-origin {escape(origin)!r} is not an origin "
                "(scheme://host[:port], e.g. https://app.example)"
            )
            raise typer.Exit(2)
    if origins and not (auth or not loopback):
        err.print(
            "[red]error:[/] --cors-origin needs --auth (with auth off, only the "
            "server's own origin may change anything)"
        )
        raise typer.Exit(2)
    from everruns.settings import load_settings

    try:
        settings = load_settings()
    except SpecError as exc:
        err.print(f"[red]error:[/] invalid settings\n{escape(str(exc))}")
        raise typer.Exit(2) from None
    config = ApiConfig(
        database_url=db,
        auth_required=auth or not loopback,
        embedded_worker=not no_worker,
        lease_ttl=lease_ttl,
        worker_concurrency=concurrency,
        cors_origins=origins,
        settings=settings,
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    err.print(
        f"everruns server on http://{host}:{port}/ (auth {'required' if config.auth_required else 'off'}, "
        f"{'no embedded worker' if no_worker else 'embedded worker'})"
    )
    from everruns.engine.hardening import harden

    harden()  # the embedded worker's keys, and the master key, leave os.environ
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")],
    db: DbOption = None,
) -> None:
    """Create an API token; it is shown once (only its hash is stored)."""

    async def go(store: Store) -> None:
        token_id, plaintext = await store.create_token(name)
        err.print(f"token {token_id} ({name}); store it now, it is not shown again:")
        out.print(plaintext)

    _run_async(lambda: _with_store(db, go))


@token_app.command("ls")
def token_ls(db: DbOption = None) -> None:
    """List API tokens (never their values)."""

    async def go(store: Store) -> None:
        for t in await store.list_tokens():
            out.print(f"{t['id']}  {t['name']}  {'revoked' if t['revoked'] else 'active'}")

    _run_async(lambda: _with_store(db, go))


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Revoke an API token."""

    async def go(store: Store) -> None:
        if not await store.revoke_token(token_id):
            raise CliError(f"no token {token_id!r}")
        out.print(f"revoked {token_id}")

    _run_async(lambda: _with_store(db, go))


secret_app = typer.Typer(
    help="Stored secrets (encrypted), each bound to the URLs it may be sent to.",
    no_args_is_help=True,
)
app.add_typer(secret_app, name="secret")


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
) -> None:
    """Store a secret for `model.credential: NAME`, bound to the --allow-url patterns.

    A spec can use it only at a matching URL; it is encrypted with EVERRUNS_MASTER_KEY.
    """
    import re

    from everruns.secretbox import SecretsUnavailable, encrypt
    from everruns.settings import check_url_pattern

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}", name):
        raise _usage(f"{name!r} is not a secret name (letters, digits, _ . -)")
    patterns = list(allow_url or [])
    if not patterns:
        raise _usage("give at least one --allow-url (a secret bound to no URL is usable nowhere)")
    try:
        patterns = [check_url_pattern(p) for p in patterns]
    except ValueError as exc:
        raise _usage(f"--allow-url: {exc}") from None
    secret = value if value is not None else sys.stdin.read().strip()
    if not secret:
        raise _usage("the secret is empty (give --value or pipe it on standard input)")

    async def go(store: Store) -> None:
        try:
            ciphertext = encrypt(secret)
        except SecretsUnavailable as exc:
            raise CliError(str(exc)) from None
        await store.put_secret(name, ciphertext, patterns)
        out.print(f"stored secret {name} (may be sent to: {', '.join(patterns)})")

    _run_async(lambda: _with_store(db, go))


@secret_app.command("ls")
def secret_ls(db: DbOption = None) -> None:
    """List stored secrets and their allowed URLs (never their values)."""

    async def go(store: Store) -> None:
        for name, urls in sorted((await store.secret_bindings()).items()):
            out.print(f"{name}  {' '.join(urls) or '(bound to no URL: unusable)'}")

    _run_async(lambda: _with_store(db, go))


def _usage(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


schedule_app = typer.Typer(
    help="Scheduled runs (cron or `every <duration>`, UTC).", no_args_is_help=True
)
app.add_typer(schedule_app, name="schedule")


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
) -> None:
    """Store the agent version and schedule it (replaces the agent's schedule)."""

    async def go() -> None:
        loaded = await _load_checked(spec, db)
        if not loaded.schedule:
            raise SpecError(
                str(spec),
                [("schedule", 'missing: e.g. `schedule: "0 9 * * *"` or `every 1h`')],
            )
        saved = await _with_store(db, lambda s: s.save_schedule(loaded, pin=not latest))
        if json_out:
            _print_json(saved)
        else:
            out.print(f"scheduled {_schedule_line(saved)}")

    _run_async(go)


@schedule_app.command("ls")
def schedule_ls(db: DbOption = None, json_out: JsonOption = False) -> None:
    """List schedules."""

    async def go(store: Store) -> None:
        items = await store.list_schedules()
        if json_out:
            _print_json(items)
            return
        table = Table("agent", "version", "schedule", "overlap", "state", "next", "last run")
        for s in items:
            table.add_row(
                s["agent"],
                str(s["agent_version"]),
                s["expression"],
                s["overlap"],
                "enabled" if s["enabled"] else "paused",
                format_status_time(s["next_fire_at"]) if s["enabled"] else "-",
                s["last_run_id"] or "-",
            )
        out.print(table)

    _run_async(lambda: _with_store(db, go))


@schedule_app.command("rm")
def schedule_rm(
    agent: Annotated[str, typer.Argument(help="Agent name.")], db: DbOption = None
) -> None:
    """Remove an agent's schedule (its runs are left alone)."""

    async def go(store: Store) -> None:
        if not await store.delete_schedule(agent):
            raise CliError(f"no schedule for agent {agent!r}")
        out.print(f"removed the schedule of {agent}")

    _run_async(lambda: _with_store(db, go))


def _set_schedule(agent: str, enabled: bool, db: str | None) -> None:
    async def go(store: Store) -> None:
        found = await store.set_schedule_enabled(agent, enabled)
        if found is None:
            raise CliError(f"no schedule for agent {agent!r}")
        out.print(f"{'resumed' if enabled else 'paused'} {_schedule_line(found)}")

    _run_async(lambda: _with_store(db, go))


@schedule_app.command("pause")
def schedule_pause(
    agent: Annotated[str, typer.Argument(help="Agent name.")], db: DbOption = None
) -> None:
    """Stop firing an agent's schedule until resumed."""
    _set_schedule(agent, False, db)


@schedule_app.command("resume")
def schedule_resume(
    agent: Annotated[str, typer.Argument(help="Agent name.")], db: DbOption = None
) -> None:
    """Fire an agent's schedule again, from its next tick (paused ticks are not caught up)."""
    _set_schedule(agent, True, db)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply database migrations (the CLI also does this on every start)."""

    async def go() -> None:
        await _with_store(db, lambda s: asyncio.sleep(0))
        out.print("database is up to date")

    _run_async(go)


from everruns.testing.cli import register as _register_testing  # noqa: E402

_register_testing(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
