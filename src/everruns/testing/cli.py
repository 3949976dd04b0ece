"""The testing commands of the `everruns` CLI: `test crash`, `export`, `import`,
`replay`, `diff`. Registered on the main app by `register(app)`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from everruns.journal import Event
from everruns.spec import SpecError, load_spec
from everruns.store import RunNotFound, Store, StoreError
from everruns.store.database import DatabaseUnavailable, DatabaseURLError
from everruns.testing import journalfile
from everruns.testing.diff import diff_runs
from everruns.testing.matrix import CrashMatrixError, acrash_matrix
from everruns.testing.replay import areplay
from everruns.tools.registry import ToolSpecError, build_tools

T = TypeVar("T")
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

test_app = typer.Typer(help="Test an agent: its crash matrix.", no_args_is_help=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EVERRUNS_DATABASE_URL",
        help="Database URL (sqlite:///path or postgresql://...).",
    ),
]


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(factory())
    except SpecError as exc:
        err.print(f"[red]error:[/] invalid agent spec\n{escape(str(exc))}")
        raise typer.Exit(2) from None
    except (journalfile.JournalFileError, CrashMatrixError, ValueError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(3) from None
    except (RunNotFound, StoreError, DatabaseURLError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _checked_spec(path: Path) -> Any:
    spec = load_spec(path)
    try:
        build_tools(spec)
    except ToolSpecError as exc:
        raise SpecError(str(path), [(exc.field, exc.message)]) from None
    return spec


@test_app.command("crash")
def test_crash(
    spec: Annotated[Path, typer.Argument(help="Agent spec (YAML); a deterministic model.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="The user message.")] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL for every case (default: SQLite per case)."),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Keep boundaries containing this.")
    ] = None,
    lease_ttl: Annotated[float, typer.Option("--lease-ttl", help="Worker lease, seconds.")] = 1.0,
    concurrency: Annotated[int, typer.Option(help="Cases executed at once.")] = 2,
) -> None:
    """Crash the agent at every boundary (real workers, SIGKILL) and check each recovery.

    Prints a table of boundary x result; exit code 1 when any boundary has a violation.
    """

    async def go() -> int:
        agent = _checked_spec(spec)
        report = await acrash_matrix(
            agent, input, db=db, only=only, lease_ttl=lease_ttl, concurrency=concurrency
        )
        table = Table(title=f"crash matrix of {report.agent}")
        table.add_column("boundary")
        table.add_column("result")
        for case in report.cases:
            style = "red" if case.violations else "green"
            table.add_row(case.point, f"[{style}]{escape(case.outcome)}[/]")
        Console(soft_wrap=True).print(table)
        for violation in report.violations:
            out.print(f"- {violation}")
        bad = sum(1 for c in report.cases if c.violations)
        out.print(f"{len(report.cases)} boundaries, {bad} with violations")
        return 1 if bad else 0

    raise typer.Exit(_run(go))


def export(
    run_id: Annotated[str, typer.Argument(help="The run to export.")],
    db: DbOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a run's journal as JSON lines (a header, then one event a line)."""

    async def go() -> str:
        store = await Store.open(db)
        try:
            return await journalfile.export_run(store, run_id)
        finally:
            await store.close()

    text = _run(go)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


def import_(
    file: Annotated[Path, typer.Argument(help="A file written by `everruns export`.")],
    db: DbOption = None,
) -> None:
    """Import an exported run (as a new run id, printed); unfinished runs come in paused."""

    async def go() -> str:
        recording = journalfile.read(file)
        store = await Store.open(db)
        try:
            return await journalfile.import_run(store, recording)
        finally:
            await store.close()

    out.print(_run(go))


def replay(
    file: Annotated[Path, typer.Argument(help="A recorded run (`everruns export` output).")],
    spec: Annotated[
        Path | None, typer.Option("--spec", help="The agent version to replay (YAML).")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Send divergent LLM calls to the spec's model.")
    ] = False,
    execute: Annotated[
        list[str] | None,
        typer.Option(
            "--execute", help="Run this tool instead of replaying its results ('*': all)."
        ),
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Database for the replay run (default: temporary).")
    ] = None,
) -> None:
    """Replay a recorded run against an agent version and print the diff.

    Exit code 0 when the replayed run equals the recording, 1 when it differs.
    """

    async def go() -> int:
        agent = _checked_spec(spec) if spec is not None else None
        tools = dict.fromkeys(execute or [], "execute")
        report = await areplay(file, agent, live=live, tools=tools, db=db)
        out.print(report.format())
        return 0 if report.same else 1

    raise typer.Exit(_run(go))


def diff(
    run_a: Annotated[str, typer.Argument(help="A run id, or an exported journal file.")],
    run_b: Annotated[str, typer.Argument(help="A run id, or an exported journal file.")],
    db: DbOption = None,
) -> None:
    """Compare two runs: steps, tokens, cost, result and transcript. Exit 1 if they differ."""

    files = {ref: Path(ref).is_file() for ref in (run_a, run_b)}

    async def go() -> int:
        store: Store | None = None

        async def events(ref: str) -> list[Event]:
            nonlocal store
            if files[ref]:
                return journalfile.read(ref).events
            if store is None:
                store = await Store.open(db)
            return await _events(store, ref)

        try:
            a, b = await events(run_a), await events(run_b)
        finally:
            if store is not None:
                await store.close()
        same, text = diff_runs(a, b, label_a=run_a, label_b=run_b)
        out.print(text)
        return 0 if same else 1

    raise typer.Exit(_run(go))


async def _events(store: Store, run_id: str) -> list[Event]:
    await store.get_run(run_id)  # RunNotFound names the run
    return await store.load_events(run_id)


def register(app: typer.Typer) -> None:
    """Add the testing commands to the `everruns` app."""
    app.add_typer(test_app, name="test")
    app.command("export")(export)
    app.command("import")(import_)
    app.command("replay")(replay)
    app.command("diff")(diff)
