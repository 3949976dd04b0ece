"""Ids a user can copy: `run` prints the run id first and a summary last, every command
takes a unique id prefix (an ambiguous one lists the candidates), `ls` never cuts an id,
and a run waiting for approval names the call and the command that decides it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner, Result

from everruns.cli import app
from everruns.cli.views import RunView, runs_table
from everruns.engine.worker import Worker
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import wait_until, write_agent

APPROVAL = {
    "name": "careful",
    "model": {
        "provider": "scripted",
        "responses": [
            {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]},
            {"text": "slept"},
        ],
    },
    "tools": [{"builtin": "sleep"}],
    "approvals": {"require_for": ["sleep"]},
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"EVERRUNS_DATABASE_URL": ""})


def test_run_prints_its_id_first_and_a_summary_last(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'e.db'}"
    spec = write_agent(
        tmp_path / "a.yaml",
        [{"text": "the answer", "usage": {"input_tokens": 5, "output_tokens": 3}}],
    )
    result = invoke("run", str(spec), "--input", "q", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    run_id = json.loads(invoke("ls", "--json", "--db", db).stdout)[0]["id"]
    assert lines[0] == f"run {run_id} (agent test-agent v1)"
    assert lines[-2].startswith(f"run {run_id} completed: 1 step, 5 in + 3 out tokens, $0.0000, ")
    assert lines[-2].endswith("s") and lines[-1] == "result: the answer"

    quiet = invoke("run", str(spec), "--input", "q", "--db", db, "--json")
    assert quiet.exit_code == 0
    events = [json.loads(line) for line in quiet.stdout.splitlines()]  # still pure JSON
    assert quiet.stderr.splitlines()[0] == f"run {events[0]['run_id']} (agent test-agent v1)"
    assert "completed: 1 step" in quiet.stderr and "result: the answer" in quiet.stderr


async def _waiting_runs(db: str) -> list[str]:
    """Two runs of `careful`, each stopped at its approval."""
    async with await Store.open(db) as store:
        ids = [await store.create_run(parse_spec(APPROVAL), "go") for _ in range(2)]
        worker = Worker(store, lease_ttl=2, only=ids, poll_interval=0.05)
        task = asyncio.create_task(worker.run())

        async def waiting() -> bool:
            return [(await store.get_run(i)).status for i in ids] == ["waiting"] * 2

        try:
            await wait_until(waiting, timeout=60, what="both runs waiting for approval")
        finally:
            worker.stop()
            await task
        return ids


def test_prefixes_ambiguity_and_the_approval_hint(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'e.db'}"
    first, second = asyncio.run(_waiting_runs(db))
    common = next(i for i in range(len(first)) if first[i] != second[i])
    unique = first[: common + 1]

    status = invoke("status", unique, "--db", db)
    assert status.exit_code == 0, status.output
    assert f"id         {first}" in status.stdout
    text = " ".join(status.stdout.split())
    assert f"approval of sleep (call_1_1): everruns approve {first} call_1_1" in text
    assert f"everruns deny {first} call_1_1" in text
    no_prefix = invoke("events", unique.removeprefix("run_"), "--json", "--db", db)
    assert json.loads(no_prefix.stdout.splitlines()[0])["run_id"] == first

    ambiguous = invoke("status", first[:common], "--db", db)
    assert ambiguous.exit_code == 2 and "Traceback" not in ambiguous.output
    assert first in ambiguous.stderr and second in ambiguous.stderr
    assert "give more characters" in ambiguous.stderr
    missing = invoke("approve", "run_zzz", "call_1_1", "--db", db)
    assert missing.exit_code == 1 and "no run with id 'run_zzz'" in missing.stderr

    approved = invoke("approve", unique, "call_1_1", "--db", db)
    assert approved.exit_code == 0 and approved.stdout == f"approved call_1_1 of {first}\n"
    listed = invoke("ls", "--db", db)
    assert first in listed.stdout and second in listed.stdout  # whole, at 80 columns


def test_ls_drops_columns_rather_than_cutting_ids() -> None:
    run = RunView(
        id="run_01m8se0f6vq2k9x4hz7d3c1b5a",
        agent="researcher",
        agent_version=1,
        status="completed",
        created_at=1.8e9,
    )
    for width in (120, 80, 50, 20):
        console = Console(width=width, soft_wrap=True)  # as the CLI's
        with console.capture() as captured:
            console.print(runs_table([run], width))
        printed = captured.get()
        assert run.id in printed, (width, printed)
        assert max(len(line) for line in printed.splitlines()) <= max(width, len(run.id) + 3)
    wide = Console(width=120, soft_wrap=True)
    with wide.capture() as captured:
        wide.print(runs_table([run], 120))
    assert "researcher" in captured.get() and "$0.0000" in captured.get()
