"""One CLI scenario, two back ends: the same commands against the database (--db, with an
`everruns worker` process) and against a real `everruns server` process (--server) print
the same thing, once run ids, worker ids and times are normalised."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from conftest import new_pg_database
from helpers import Server, cli, env_for, start_worker, stop, write_agent

pytestmark = pytest.mark.timeout(480)  # ~40 CLI processes on a 2-core machine

Cli = Callable[..., subprocess.CompletedProcess[str]]
DATE = re.compile(r"\d{4}-\d\d-\d\d")
CLOCK = re.compile(r"\d\d:\d\d:\d\d")
WALL = re.compile(r"\d+\.\ds\b")  # `run`'s wall time
TIMES = ("ts", "created_at", "updated_at", "wake_at", "next_fire_at", "last_fired_at")


@pytest.fixture
def server_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second database of the same kind, for the server."""
    if not db_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with new_pg_database() as url:
        yield url


def _normalise_json(value: Any, workers: set[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in TIMES and item is not None:
                item = "TIME"
            elif key in ("lease_owner", "worker") and item is not None:
                workers.add(item)
                item = "WORKER"
            out[key] = _normalise_json(item, workers)
        return out
    if isinstance(value, list):
        return [_normalise_json(v, workers) for v in value]
    return value


def _scenario(run: Cli, spec: Path, scheduled: Path) -> list[tuple[str, int, str, str]]:
    """(command, exit code, stdout, stderr) of each step."""
    steps: list[tuple[str, int, str, str]] = []

    def step(*args: str) -> str:
        result = run(*args)
        steps.append((" ".join(args), result.returncode, result.stdout, result.stderr))
        return result.stdout

    run_id = json.loads(step("start", str(spec), "--input", "hi", "--json"))["id"]
    followed = step("events", run_id, "--follow", "--json")  # ends with the run
    assert json.loads(followed.splitlines()[-1])["type"] == "run.completed", steps[-1]
    step("status", run_id)
    step("status", run_id, "--json")
    step("events", run_id)
    step("ls")
    step("ls", "--json")
    step("ls", "--status", "completed", "--agent", "echo", "--json")
    step("ls", "--status", "failed", "--json")
    step("message", run_id, "one more")
    deadline = time.monotonic() + 60
    while '"llm.started"' not in run("events", run_id, "--json", "--after", "6").stdout:
        assert time.monotonic() < deadline, "the new turn never started"
        time.sleep(0.2)
    step("cancel", run_id)
    step("status", run_id, "--json")
    step("events", run_id, "--follow")  # a finished run: the whole journal, then it ends
    step("events", run_id, "--json")
    step("status", "run_nope")
    step("approve", run_id, "call_9_9")
    step("deny", run_id, "call_9_9", "--reason", "no")
    step("status", run_id[:12])  # a unique prefix
    # `run` executes here with --db and on the server's workers with --server.
    second = json.loads(step("run", str(spec), "--input", "again", "--json").splitlines()[0])
    step("schedule", "add", str(scheduled), "--json")
    step("schedule", "ls", "--json")
    step("schedule", "pause", "nightly")
    step("schedule", "rm", "nightly")
    step("schedule", "rm", "nightly")
    step("memory", "ls", "echo", "--json")
    step("memory", "rm", "echo", "note_nope")
    step("secret", "set", "team-key", "--value", "s3cret", "--allow-url", "https://api.x.dev/*")
    names = {run_id: "RUN", second["run_id"]: "RUN2", run_id[:12]: "PREFIX"}
    return [_normalise(names, s) for s in steps]


def _normalise(names: dict[str, str], step: tuple[str, int, str, str]) -> tuple[str, int, str, str]:
    """Ids (`names`, longest first), worker ids, times and wall times made comparable."""
    command, code, stdout, stderr = step
    workers: set[str] = set()
    lines = []
    for line in stdout.splitlines():
        try:
            lines.append(json.dumps(_normalise_json(json.loads(line), workers)))
        except ValueError:
            lines.append(line)
    text = "\n".join(lines)
    for worker in workers:
        text = text.replace(worker, "WORKER")
    text = re.sub(r"worker \S+ epoch", "worker WORKER epoch", text)

    def clean(s: str) -> str:
        for name, token in names.items():  # full ids before the prefix
            s = s.replace(name, token)
        s = WALL.sub("WALL", s)
        return CLOCK.sub("TIME", DATE.sub("DATE", s))

    return clean(command), code, clean(text), clean(stderr)


def test_the_same_scenario_prints_the_same_on_both_back_ends(
    db_url: str, server_db_url: str, tmp_path: Path
) -> None:
    spec = write_agent(
        tmp_path / "echo.yaml",
        [{"text": "first answer"}, {"text": "never", "delay": 60}],
        name="echo",
    )
    scheduled = write_agent(
        tmp_path / "nightly.yaml", [{"text": "tick"}], name="nightly", schedule="every 1h"
    )
    key = Fernet.generate_key().decode()  # `secret set` encrypts with it, here or on the server
    local_env = env_for(db_url, EVERRUNS_MASTER_KEY=key)
    local_env.pop("EVERRUNS_DATABASE_URL")
    worker = start_worker(local_env, "--db", db_url, "--lease-ttl", "2", "--poll-interval", "0.1")
    try:
        local = _scenario(
            lambda *a: cli(*a, "--db", db_url, env=local_env, cwd=tmp_path), spec, scheduled
        )
    finally:
        stop(worker)

    server = Server(
        env_for(server_db_url, EVERRUNS_MASTER_KEY=key),
        "--lease-ttl",
        "2",
        log=tmp_path / "server.log",
    )
    remote_cwd = tmp_path / "remote"
    remote_cwd.mkdir()
    remote_env = env_for(server_db_url)
    remote_env.pop("EVERRUNS_DATABASE_URL")
    try:
        remote = _scenario(
            lambda *a: cli(*a, "--server", server.url, env=remote_env, cwd=remote_cwd),
            spec,
            scheduled,
        )
    finally:
        server.stop()
    assert list(remote_cwd.iterdir()) == [], "--server touched no local database"

    for mine, theirs in zip(local, remote, strict=True):
        assert mine == theirs
    # ... and what they print is the scenario's, not two equal failures.
    by_command = {command: (code, out, err) for command, code, out, err in local}
    status = json.loads(by_command["status RUN --json"][1])
    assert status["result"] is None and status["status"] == "cancelled"
    assert by_command["start " + str(spec) + " --input hi --json"][0] == 0
    assert "result   first answer" in by_command["status RUN"][1]
    assert "status   completed" in by_command["status RUN"][1]
    assert by_command["message RUN one more"][1] == "message journaled as seq 6 of RUN"
    assert by_command["cancel RUN"][1] == "run RUN cancelled"
    types = [json.loads(x)["type"] for x in by_command["events RUN --json"][1].splitlines()]
    first_turn = ["run.created", "run.started", "llm.started", "llm.completed", "run.completed"]
    assert types[:5] == first_turn
    assert types[5:7] == ["message.user", "run.started"] and types[-1] == "run.cancelled"
    assert "run.cancelled" in by_command["events RUN --follow"][1]
    assert by_command["status run_nope"][:1] == (1,)
    assert "no run with id 'run_nope'" in by_command["status run_nope"][2]
    assert by_command["approve RUN call_9_9"][0] == 1
    assert "no pending approval for call 'call_9_9'" in by_command["approve RUN call_9_9"][2]
    assert json.loads(by_command["ls --status failed --json"][1]) == []
    assert [r["status"] for r in json.loads(by_command["ls --json"][1])] == ["completed"]
    assert "status   cancelled" in by_command["status PREFIX"][1]
    ran = by_command[f"run {spec} --input again --json"]
    assert ran[0] == 0 and json.loads(ran[1].splitlines()[-1])["type"] == "run.completed"
    assert "completed: 1 step" in ran[2] and "result: first answer" in ran[2]
    assert json.loads(by_command[f"schedule add {scheduled} --json"][1])["agent"] == "nightly"
    assert by_command["schedule pause nightly"][1].startswith("paused nightly")
    assert by_command["schedule rm nightly"][0] == 1  # the second time: gone
    assert "no schedule for agent 'nightly'" in by_command["schedule rm nightly"][2]
    assert json.loads(by_command["memory ls echo --json"][1]) == []
    assert "agent 'echo' has no note 'note_nope'" in by_command["memory rm echo note_nope"][2]
    stored = by_command["secret set team-key --value s3cret --allow-url https://api.x.dev/*"]
    assert stored[:2] == (0, "stored secret team-key (may be sent to: https://api.x.dev/*)")
    for _command, _code, _out, err in local:
        assert "Traceback" not in err
