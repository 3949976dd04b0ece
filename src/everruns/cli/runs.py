"""Run commands: start, run, status, events, ls, cancel, approve, deny, message.

Each is written once against `Backend`; --server only changes which back end
`open_backend` returns. `run` executes in this process and so needs the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    DbOption,
    InputOption,
    JsonOption,
    LeaseOption,
    RunIdArgument,
    ServerOption,
    SpecArgument,
    TokenOption,
    err,
    install_stop_handlers,
    load_checked,
    out,
    print_json,
    run_async,
)
from everruns.cli.files import DirOption, FileOption, read_inputs
from everruns.cli.local import LocalBackend
from everruns.cli.progressbar import ToolProgressBar
from everruns.cli.views import runs_table, status_table, totals_line
from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES
from everruns.engine.worker import Worker
from everruns.render import format_event
from everruns.store import Store

CallIdArgument = Annotated[str, typer.Argument(help="Tool call id (see `everruns events`).")]
STATUSES = ("queued", "running", "waiting", "paused", "completed", "failed", "cancelled")
CANCEL_POLL = 0.2


def start(
    spec: SpecArgument,
    input: InputOption = None,
    file: FileOption = None,
    dir: DirOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Queue a new run and print its id; a worker executes it."""

    async def go() -> None:
        loaded = await load_checked(spec, None if server else db)
        inputs = read_inputs(loaded, file, dir)
        async with open_backend(db, server, token) as backend:
            run_id = await backend.start_run(loaded, input, inputs)
        if json_out:
            print_json({"id": run_id, "status": "queued", "agent": loaded.name})
        else:
            out.print(run_id, highlight=False)

    run_async(go)


def run(
    spec: SpecArgument,
    input: InputOption = None,
    file: FileOption = None,
    dir: DirOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    lease_ttl: LeaseOption = 15.0,
) -> None:
    """Run an agent in this process and show its progress live.

    The run is durable like any other: if this process dies, `everruns worker`
    continues it. Exit code 0 when it completes, 1 when it fails or is cancelled.
    """

    async def go() -> int:
        loaded = await load_checked(spec, db)
        inputs = read_inputs(loaded, file, dir)
        async with LocalBackend.open(db) as local:
            run_id = await local.start_run(loaded, input, inputs)
            return await _run_in_process(local.store, run_id, json_out, lease_ttl)

    code = run_async(go)
    raise typer.Exit(code)


def _show(record: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(record)
    else:
        out.print(format_event(record), highlight=False)


async def _run_in_process(store: Store, run_id: str, json_out: bool, lease_ttl: float) -> int:
    worker = Worker(store, concurrency=8, lease_ttl=lease_ttl, only=[run_id], poll_interval=0.2)
    queue = worker.broker.subscribe(run_id)
    install_stop_handlers(worker.stop)
    worker_task = asyncio.create_task(worker.run())
    for created in await store.load_events(run_id):
        _show({"run_id": run_id, **created.to_dict()}, json_out)
    streaming = False
    status = "queued"
    bar = ToolProgressBar(out, enabled=not json_out)
    try:
        while True:
            get = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({get, worker_task}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            event = get.result()
            if event["type"] in ("tool.progress", "tool.completed", "tool.retrying"):
                data = event["data"]
                bar.update(data if event.get("ephemeral") else data.get("progress"), data["name"])
            if event.get("ephemeral"):
                if not json_out and event["type"] == "llm.delta":
                    out.print(event["data"]["text"], end="", style="cyan", highlight=False)
                    streaming = True
                continue
            if streaming and not json_out:
                out.print()
                streaming = False
            _show(event, json_out)
            if event["type"] in TERMINAL_EVENTS:
                status = event["type"].split(".")[1]
                break
    finally:
        bar.stop()
        worker.stop()
        await worker_task
    if status == "queued":  # stopped by a signal before the run ended
        if not json_out:
            err.print(f"stopped; the run continues on any worker: everruns status {run_id}")
        return 130
    return 0 if status == "completed" else 1


def status(
    run_id: RunIdArgument,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Show a run's status, steps, usage and result."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            found = await backend.get_run(run_id)
        if json_out:
            print_json(found.to_dict())
        else:
            out.print(status_table(found))

    run_async(go)


def events(
    run_id: RunIdArgument,
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

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            await backend.get_run(run_id)  # a clear error for an unknown id
            if follow:
                last = after
                while True:  # a message after the end started a new turn: follow on
                    async for record in backend.follow(run_id, last):
                        _show(record, json_out)
                        last = record["seq"]
                    if (await backend.get_run(run_id)).last_seq <= last:
                        break
            else:
                for record in await backend.events(run_id, after):
                    _show(record, json_out)

    run_async(go)


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
    if status is not None and status not in STATUSES:
        err.print(f"[red]error:[/] --status must be one of {', '.join(STATUSES)}")
        raise typer.Exit(2)

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            found = await backend.list_runs(status=status, agent=agent, limit=limit)
        if json_out:
            print_json([r.to_dict() for r in found])
        else:
            out.print(runs_table(found))
            if agent is not None:
                out.print(totals_line(found), highlight=False)

    run_async(go)


def cancel(
    run_id: RunIdArgument,
    db: DbOption = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running run to stop.")] = 30.0,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a run, stopping its in-flight LLM call and tools."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            outcome = await backend.cancel(run_id)
            if outcome in ("completed", "failed"):
                out.print(f"run {run_id} already {outcome}")
                return
            deadline = time.monotonic() + wait
            while outcome == "requested" and time.monotonic() < deadline:
                await asyncio.sleep(CANCEL_POLL)
                current = await backend.get_run(run_id)
                if current.status in TERMINAL_STATUSES:
                    outcome = current.status
                elif current.lease_owner is None or (
                    current.lease_expires_at is not None and current.lease_expires_at < time.time()
                ):
                    outcome = await backend.cancel(run_id)  # its worker is gone: cancel now
        if outcome == "requested":
            out.print(f"cancel requested for {run_id}; its worker will stop it")
        else:
            out.print(f"run {run_id} {outcome}")

    run_async(go)


def approve(
    run_id: RunIdArgument,
    call_id: CallIdArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Approve a tool call that waits for a human; the run continues on any worker."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            await backend.approve(run_id, call_id)
        out.print(f"approved {call_id} of {run_id}")

    run_async(go)


def deny(
    run_id: RunIdArgument,
    call_id: CallIdArgument,
    reason: Annotated[str, typer.Option(help="Why; the model sees it.")] = "",
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Deny a tool call that waits for a human; the model sees the denial as the tool's result."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            await backend.deny(run_id, call_id, reason)
        out.print(f"denied {call_id} of {run_id}")

    run_async(go)


def message(
    run_id: RunIdArgument,
    text: Annotated[str, typer.Argument(help="The message.")],
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Send a user message into a run; a finished run starts a new turn."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            seq = await backend.message(run_id, text)
        out.print(f"message journaled as seq {seq} of {run_id}")

    run_async(go)
