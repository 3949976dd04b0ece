"""Run commands: start, run, status, events, ls, cancel, approve, deny, message.

Each is written once against `Backend`; --server only changes which back end
`open_backend` returns. `run` executes in this process and so needs the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from everruns.cli.backend import Backend, open_backend, resolve_run
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
from everruns.cli.local import LocalBackend, view
from everruns.cli.progressbar import ToolProgressBar
from everruns.cli.views import (
    RunView,
    approval_hint,
    event_record,
    pending_approvals,
    run_summary,
    runs_table,
    status_table,
    totals_line,
)
from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES, EventType
from everruns.engine.worker import Worker
from everruns.render import format_event
from everruns.store import Store

CallIdArgument = Annotated[str, typer.Argument(help="Tool call id (see `everruns events`).")]
STATUSES = ("queued", "running", "waiting", "paused", "completed", "failed", "cancelled")
CANCEL_POLL = 0.2
JOURNAL_POLL = 0.5  # `run`: how often the journal is read besides the live events
_NO_INPUT = (
    "note: no --input, so run {run_id} waits for its first message: everruns message {run_id} TEXT"
)


def start(
    spec: SpecArgument,
    input: InputOption = None,
    file: FileOption = None,
    dir: DirOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Start at most one run for this key: a repeat prints the same run id.",
        ),
    ] = None,
) -> None:
    """Queue a new run and print its id; a worker executes it.

    Without --input the run waits for its first message (`everruns message RUN TEXT`).
    """

    async def go() -> None:
        loaded = await load_checked(spec, None if server else db)
        inputs = read_inputs(loaded, file, dir)
        async with open_backend(db, server, token, create=True) as backend:
            run_id = await backend.start_run(loaded, input, idempotency_key, inputs)
        if json_out:
            print_json({"id": run_id, "status": "queued", "agent": loaded.name})
        else:
            out.print(run_id, highlight=False)
        if input is None:
            err.print(_NO_INPUT.format(run_id=run_id), highlight=False)

    run_async(go)


def run(
    spec: SpecArgument,
    input: InputOption = None,
    file: FileOption = None,
    dir: DirOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
    lease_ttl: LeaseOption = 15.0,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Run an agent and show its progress live: its id first, a summary last.

    Locally it executes in this process, and is durable like any other run: if this
    process dies, `everruns worker` continues it. With --server the server's workers
    execute it and this command follows it. Exit code 0 when it completes, 1 when it
    fails or is cancelled.
    """

    async def go() -> int:
        loaded = await load_checked(spec, None if server else db)
        inputs = read_inputs(loaded, file, dir)
        if server:
            async with open_backend(db, server, token) as backend:
                return await _follow_to_end(
                    backend, await backend.start_run(loaded, input, files=inputs), json_out
                )
        async with LocalBackend.open(db, create=True) as local:
            run_id = await local.start_run(loaded, input, files=inputs)
            return await _run_in_process(local.store, run_id, json_out, lease_ttl)

    code = run_async(go)
    raise typer.Exit(code)


def _show(record: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(record)
    else:
        out.print(format_event(record), highlight=False)


def _announce(run: RunView, json_out: bool) -> Console:
    """`run`'s first line (its id), on the console its notes go to (stderr with --json)."""
    note = err if json_out else out
    note.print(f"run {run.id} (agent {run.agent} v{run.agent_version})", highlight=False)
    if run.input is None:
        err.print(_NO_INPUT.format(run_id=run.id), highlight=False)
    return note


async def _run_in_process(store: Store, run_id: str, json_out: bool, lease_ttl: float) -> int:
    """Execute the run here, printing its events; its id first and a summary last (on
    standard error with --json, so standard output stays one JSON event a line)."""
    started = time.monotonic()
    note = _announce(view(await store.get_run(run_id)), json_out)
    worker = Worker(store, concurrency=8, lease_ttl=lease_ttl, only=[run_id], poll_interval=0.2)
    queue = worker.broker.subscribe(run_id)
    install_stop_handlers(worker.stop)
    worker_task = asyncio.create_task(worker.run())
    streaming = False
    status = "queued"
    last = 0

    bar = ToolProgressBar(out, enabled=not json_out)

    def show(record: dict[str, Any]) -> None:
        nonlocal streaming, status, last
        if record["seq"] is None or record["seq"] <= last:
            return  # seen already (from the broker, or from the journal)
        if record["type"] in ("tool.completed", "tool.retrying"):
            bar.update(record["data"].get("progress"), record["data"].get("name"))
        if streaming and not json_out:
            out.print()
            streaming = False
        _show(record, json_out)
        last = record["seq"]
        if record["type"] == EventType.APPROVAL_REQUESTED:
            note.print(f"waiting for {approval_hint(run_id, record['data'])}", highlight=False)
        if record["type"] in TERMINAL_EVENTS:
            status = record["type"].split(".")[1]

    try:
        # Events come live from this process's worker; the journal is read too, so a run
        # that another worker (`everruns worker` on the same database) took is followed.
        while status == "queued" and not worker_task.done():
            try:
                event = await asyncio.wait_for(queue.get(), JOURNAL_POLL)
            except TimeoutError:
                found = await store.load_events(run_id, after=last)
                if queue.empty():  # else the live events lead, so deltas keep their place
                    for e in found:
                        show(event_record(run_id, e.seq, e.type, e.ts, e.data))
                continue
            if event.get("ephemeral"):
                if event["type"] == "tool.progress":
                    bar.update(event["data"], event["data"].get("name"))
                if not json_out and event["type"] == "llm.delta":
                    out.print(event["data"]["text"], end="", style="cyan", highlight=False)
                    streaming = True
                continue
            # In order, none skipped, and none past this live event: deltas queued after it
            # belong after it.
            for e in await store.load_events(run_id, after=last):
                if e.seq > event["seq"]:
                    break
                show(event_record(run_id, e.seq, e.type, e.ts, e.data))
    finally:
        bar.stop()
        worker.stop()
        await worker_task
    if status == "queued":  # stopped by a signal before the run ended
        if not json_out:
            err.print(f"stopped; the run continues on any worker: everruns status {run_id}")
        return 130
    summary = run_summary(view(await store.get_run(run_id)), time.monotonic() - started)
    for line in summary:
        note.print(line, highlight=False)
    return 0 if status == "completed" else 1


async def _follow_to_end(backend: Backend, run_id: str, json_out: bool) -> int:
    """Print a run's events until it ends, between its id and its summary."""
    started = time.monotonic()
    note = _announce(await backend.get_run(run_id), json_out)
    async for record in backend.follow(run_id, 0):
        _show(record, json_out)
        if record["type"] == EventType.APPROVAL_REQUESTED:
            note.print(f"waiting for {approval_hint(run_id, record['data'])}", highlight=False)
    final = await backend.get_run(run_id)
    for line in run_summary(final, time.monotonic() - started):
        note.print(line, highlight=False)
    return 0 if final.status == "completed" else 1


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
            found = await backend.get_run(await resolve_run(backend, run_id))
            waits_for = []
            if found.status == "waiting" and not json_out:
                waits_for = pending_approvals(await backend.events(found.id, 0))
        if json_out:
            print_json(found.to_dict())
        else:
            out.print(status_table(found, waits_for))

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
            full = await resolve_run(backend, run_id)  # a clear error for an unknown id
            if follow:
                last = after
                while True:  # a message after the end started a new turn: follow on
                    async for record in backend.follow(full, last):
                        _show(record, json_out)
                        last = record["seq"]
                    if (await backend.get_run(full)).last_seq <= last:
                        break
            else:
                for record in await backend.events(full, after):
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
            out.print(runs_table(found, out.width))
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
            full = await resolve_run(backend, run_id)
            outcome = await backend.cancel(full)
            if outcome in ("completed", "failed"):
                out.print(f"run {full} already {outcome}")
                return
            deadline = time.monotonic() + wait
            while outcome == "requested" and time.monotonic() < deadline:
                await asyncio.sleep(CANCEL_POLL)
                current = await backend.get_run(full)
                if current.status in TERMINAL_STATUSES:
                    outcome = current.status
                elif current.lease_owner is None or (
                    current.lease_expires_at is not None and current.lease_expires_at < time.time()
                ):
                    outcome = await backend.cancel(full)  # its worker is gone: cancel now
        if outcome == "requested":
            out.print(f"cancel requested for {full}; its worker will stop it")
        else:
            out.print(f"run {full} {outcome}")

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
            full = await resolve_run(backend, run_id)
            await backend.approve(full, call_id)
        out.print(f"approved {call_id} of {full}")

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
            full = await resolve_run(backend, run_id)
            await backend.deny(full, call_id, reason)
        out.print(f"denied {call_id} of {full}")

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
            full = await resolve_run(backend, run_id)
            seq = await backend.message(full, text)
        out.print(f"message journaled as seq {seq} of {full}")

    run_async(go)
