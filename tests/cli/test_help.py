"""`--version`, `-h` as `--help`, and help text that names no `<bool>` type."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from everruns import __version__
from everruns.cli import app

COMMANDS = [[], ["ls"], ["events"], ["start"], ["server"], ["token", "create"], ["schedule"]]


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"everruns {__version__}\n"


def test_dash_h_is_help_everywhere_and_flags_show_no_bool_type() -> None:
    runner = CliRunner()
    env = {"COLUMNS": "100", "EVERRUNS_DATABASE_URL": os.devnull}
    for command in COMMANDS:
        short = runner.invoke(app, [*command, "-h"], env=env)
        long = runner.invoke(app, [*command, "--help"], env=env)
        assert short.exit_code == 0 and short.output == long.output, command
        assert "Usage:" in short.output and "<bool>" not in short.output, command
    assert "--json  " in runner.invoke(app, ["ls", "-h"], env=env).output
