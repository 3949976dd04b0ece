"""Files into a run (`start`/`run --file PATH --dir PATH`) and out of it (`workspace`).

Written once against `Backend`: with --server the files travel through the API
(blob uploads in, the files listing and the zip out), else through the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from everruns.cli.backend import open_backend, resolve_run
from everruns.cli.common import (
    CliError,
    DbOption,
    JsonOption,
    RunIdArgument,
    ServerOption,
    TokenOption,
    out,
    print_json,
    run_async,
    usage_error,
)
from everruns.spec import AgentSpec
from everruns.tools.workspace import collect_inputs, confine, replace_file

FileOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--file", help="Put this file into the run's workspace (at its name); repeatable."
    ),
]
DirOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--dir",
        help="Put this directory's contents into the workspace root (workspace.exclude "
        "applies: __pycache__/, *.pyc, .git/ by default); repeatable.",
    ),
]


def read_inputs(
    spec: AgentSpec, files: list[Path] | None, dirs: list[Path] | None
) -> dict[str, bytes] | None:
    """The input files of a new run, or None when none were given."""
    if not files and not dirs:
        return None
    try:
        return collect_inputs(files or [], dirs or [], spec.workspace_exclude)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None


def write_export(target: Path, contents: dict[str, bytes], force: bool) -> None:
    """Write the files into `target`; a non-empty `target` only with `force`."""
    if target.exists() and not target.is_dir():
        raise CliError(f"--export {target}: not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise CliError(
            f"--export {target}: the directory is not empty; choose an empty one or add "
            "--force to overwrite the files it has in common with the workspace"
        )
    target.mkdir(parents=True, exist_ok=True)
    for rel, data in contents.items():
        replace_file(rel, confine(target, rel), data)


def workspace(
    run_id: RunIdArgument,
    export: Annotated[
        Path | None, typer.Option("--export", help="Write the files into DIR.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Export into a non-empty DIR (overwrites).")
    ] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List a run's workspace files (as journaled), or export them into a directory."""

    if export is not None and export.exists() and not export.is_dir():
        raise usage_error(f"--export {export}: a file is there; give a directory (new or existing)")

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            full = await resolve_run(backend, run_id)  # an id prefix, or a clear error
            if export is None:
                entries = await backend.files(full)
                if json_out:
                    print_json(entries)
                    return
                for e in entries:
                    out.print(
                        f"{e['sha256'][:12]}  {e['size'] or 0:>9}  step {e['step']:<3} "
                        f"seq {e['seq']:<5} {e['path']}",
                        highlight=False,
                    )
                return
            contents = await backend.file_contents(full)
        write_export(export, contents, force)
        out.print(f"exported {len(contents)} files to {export}")

    run_async(go)
