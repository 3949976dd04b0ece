"""The `everruns` command line: every command is registered here, in help order.

To add a command: write it in the module of its concept (a function with Typer-annotated
parameters, or a `typer.Typer()` group) and add one line below.
"""

from __future__ import annotations

from typing import Annotated

import typer

from everruns import __version__
from everruns.cli import (
    access,
    budgets,
    doctor,
    files,
    maintenance,
    memory,
    runs,
    schedules,
    serve,
    verbs,
)
from everruns.cli.common import Debug
from everruns.testing.cli import register as register_testing

app = typer.Typer(
    help="Durable execution for long-lived AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # plain click help: flags without a `<bool>` type column
)


def _print_version(value: bool) -> None:
    if value:
        print(f"everruns {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="EVERRUNS_DEBUG", help="Print the traceback behind an error."
        ),
    ] = False,
) -> None:
    """Durable execution for long-lived AI agents."""
    Debug.enabled = debug


app.add_typer(maintenance.db_app, name="db")
maintenance.db_app.command("retention")(verbs.retention)
app.command()(maintenance.validate)
app.command()(runs.start)
app.command()(runs.run)
app.command()(serve.worker)
app.command()(runs.status)
app.command()(runs.events)
app.command("ls")(runs.list_runs)
app.command()(runs.cancel)
app.command()(runs.approve)
app.command()(runs.deny)
app.command()(runs.message)
app.command()(verbs.steer)
app.command()(verbs.interrupt)
app.command()(budgets.budget)
app.command()(budgets.resume)
app.command()(files.workspace)
app.command()(serve.server)
app.command()(doctor.doctor)
app.add_typer(access.token_app, name="token")
app.add_typer(access.secret_app, name="secret")
app.add_typer(schedules.schedule_app, name="schedule")
app.add_typer(memory.memory_app, name="memory", no_args_is_help=True)
register_testing(app)  # test, export, import, replay, diff


def main() -> None:
    app()
