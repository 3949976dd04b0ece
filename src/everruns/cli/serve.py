"""Long-running processes: `worker` executes runs, `server` serves the API and web UI."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from rich.markup import escape

from everruns.cli.common import (
    DbOption,
    LeaseOption,
    err,
    install_stop_handlers,
    run_async,
    usage_error,
)
from everruns.engine.worker import Worker
from everruns.render import format_status_time
from everruns.spec import SpecError
from everruns.store import Store


def worker(
    db: DbOption = None,
    concurrency: Annotated[int, typer.Option(help="Runs executed at once.", min=1)] = 64,
    lease_ttl: LeaseOption = 15.0,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between claims when idle (default 0.1 on SQLite; 0.5 on "
            "PostgreSQL, whose workers are also woken by NOTIFY).",
            min=0.01,
        ),
    ] = None,
    max_crashes: Annotated[
        int, typer.Option(help="Fail a run after this many workers died on it without progress.")
    ] = 5,
    shutdown_grace: Annotated[
        float, typer.Option(help="On SIGTERM, seconds to let in-flight atoms finish.")
    ] = 10.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve this worker's Prometheus metrics on this port (GET /metrics).",
            min=0,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the metrics endpoint.")
    ] = "127.0.0.1",
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
    log = logging.getLogger("everruns.worker")
    if metrics_port is not None:
        from everruns.metrics import serve_metrics

        bound = serve_metrics(metrics_host, metrics_port)
        log.info("metrics on http://%s:%d/metrics", metrics_host, bound)

    async def go() -> None:
        store = await Store.open(db)
        reports: set[asyncio.Task[None]] = set()

        def finished(run_id: str) -> None:
            task = asyncio.get_running_loop().create_task(_report(store, run_id, log))
            reports.add(task)
            task.add_done_callback(reports.discard)

        w = Worker(
            store,
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_crashes=max_crashes,
            shutdown_grace=shutdown_grace,
            on_claim=lambda c: log.info("claimed %s (epoch %d)", c.run_id, c.epoch),
            on_finish=finished,
        )
        install_stop_handlers(w.stop)
        log.info(
            "worker %s started (concurrency %d, lease %gs)", w.worker_id, concurrency, lease_ttl
        )
        try:
            await w.run()
            await asyncio.gather(*reports, return_exceptions=True)
        finally:
            await store.close()
        log.info("worker %s stopped", w.worker_id)

    run_async(go)


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
    concurrency: Annotated[int, typer.Option(help="Embedded worker concurrency.", min=1)] = 64,
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
            raise usage_error(
                f"--cors-origin {origin!r} is not an origin "
                "(scheme://host[:port], e.g. https://app.example)"
            )
    if origins and not (auth or not loopback):
        raise usage_error(
            "--cors-origin needs --auth (with auth off, only the "
            "server's own origin may change anything)"
        )
    from everruns.settings import load_settings

    try:
        settings = load_settings()
    except SpecError as exc:
        err.print(f"[red]error:[/] invalid settings\n{escape(str(exc))}")
        raise typer.Exit(2) from None
    run_async(lambda: _check_database(db))  # a bad --db: a message now, not a traceback later
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


async def _report(store: Store, run_id: str, log: logging.Logger) -> None:
    """One log line when this worker lets go of a run: how it ended, or why it waits."""
    try:
        row = await store.get_run(run_id)
    except Exception as exc:  # the database went away: the run itself is safe in it
        log.warning("released %s (its status could not be read: %s)", run_id, exc)
        return
    usage = f"{row.steps} steps, {row.input_tokens + row.output_tokens} tokens"
    if row.status == "completed":
        log.info("completed %s (%s)", run_id, usage)
    elif row.status == "failed":
        error = row.error or {}
        log.warning(
            "failed %s: %s: %s (%s)", run_id, error.get("reason"), error.get("message"), usage
        )
    elif row.status == "waiting":
        why = f"until {format_status_time(row.wake_at)}" if row.wake_at else "for a signal"
        log.info("released %s: waiting %s (everruns status %s)", run_id, why, run_id)
    else:
        log.info("released %s: %s", run_id, row.status)


async def _check_database(db: str | None) -> None:
    store = await Store.open(db)
    await store.close()
