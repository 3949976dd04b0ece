"""No traceback reaches a user: each bad `--db`, bad spec and bad option ends in one or two
lines naming the problem and the fix, exit code 2 (usage, spec) or 3 (database), and
leaves no file behind. In-process (Typer's CliRunner): the message and the exit code are
the behaviour; `--debug` brings the traceback back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from conftest import PG_ADMIN_URL, _need_pg
from everruns.api import ApiConfig, create_app
from everruns.cli import app
from helpers import free_port, write_agent

DEEP = "name: x\nmodel: {provider: scripted, responses: [{text: hi}]}\ntools: " + (
    "[" * 5000 + "]" * 5000
)


@pytest.fixture
def here(tmp_path: Path) -> Iterator[Path]:
    """Commands run in an empty directory, so any file they create shows."""
    cwd = Path.cwd()
    work = tmp_path / "cwd"
    work.mkdir()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(cwd)


def invoke(*args: str) -> Result:
    env = {"EVERRUNS_DATABASE_URL": "", "EVERRUNS_SERVER": "", "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def check(result: Result, code: int, *words: str) -> str:
    text = result.stdout + result.stderr
    assert result.exit_code == code, text
    assert "Traceback" not in text, text
    assert isinstance(result.exception, SystemExit), result.exception  # not an error escaping
    message = result.stderr
    assert message.startswith("error: "), text
    assert len(message.strip().splitlines()) <= 2, message
    for word in words:
        assert word in message, message
    return message


def nothing_in(path: Path) -> None:
    assert list(path.iterdir()) == [], list(path.iterdir())


@pytest.mark.parametrize(
    "command",
    [["ls"], ["status", "run_x"], ["events", "run_x"], ["workspace", "run_x"], ["token", "ls"]],
)
def test_reading_commands_never_create_a_database(here: Path, command: list[str]) -> None:
    check(invoke(*command, "--db", "foo"), 3, "no database at foo", "everruns start", "--db")
    check(invoke(*command), 3, "no database at .everruns/everruns.db")
    nested = here / "nonexistent" / "dir" / "x.db"
    check(invoke(*command, "--db", f"sqlite:///{nested}"), 3, f"no database at {nested}")
    nothing_in(here)


def test_a_directory_that_cannot_be_created(here: Path, tmp_path: Path) -> None:
    spec = write_agent(tmp_path / "a.yaml", [{"text": "hi"}])
    (here / "afile").write_text("")
    message = check(invoke("start", str(spec), "--db", "afile/x.db"), 3, "cannot create")
    assert "afile" in message and "writable directory" in message
    assert [p.name for p in here.iterdir()] == ["afile"]


def test_bad_urls_are_usage_errors(here: Path) -> None:
    check(invoke("ls", "--db", "mysql://u@h/db"), 2, "unsupported database URL", "sqlite:///")
    check(invoke("ls", "--db", "sqlite://relative.db"), 2, "sqlite:///relative.db")
    check(invoke("ls", "--db", "postgresql://h:port/x"), 2, "not a database URL")
    nothing_in(here)


def test_unreachable_postgres_host(here: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nope"
    check(invoke("ls", "--db", url), 3, "cannot open the database", "refused", "running")
    check(invoke("status", "run_x", "--db", url), 3, "refused")
    nothing_in(here)


def test_missing_postgres_database_and_wrong_user(here: Path) -> None:
    _need_pg()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    check(invoke("ls", "--db", f"{base}/everruns_no_such_db"), 3, "does not exist", "createdb")
    wrong = PG_ADMIN_URL.replace("postgres@", "no_such_role:s3cretpw@", 1)
    message = check(invoke("ls", "--db", wrong), 3, "no_such_role", "user and password")
    assert "s3cretpw" not in message  # never the password
    nothing_in(here)


def test_workspace_export_onto_a_file(here: Path) -> None:
    (here / "taken").write_text("mine")
    check(invoke("workspace", "run_x", "--export", "taken", "--db", "x.db"), 2, "taken", "dir")
    assert (here / "taken").read_text() == "mine"
    assert [p.name for p in here.iterdir()] == ["taken"]


def test_specs_that_are_not_utf8_or_nested_too_deeply(here: Path, tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\nmodel: scripted:x\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP)
    for command in ("start", "run", "validate"):
        check(invoke(command, str(latin)), 2, "latin.yaml", "not UTF-8", "0xe9")
        check(invoke(command, str(deep)), 2, "deep.yaml", "nested too deeply")
    nothing_in(here)


def test_debug_shows_the_traceback(here: Path) -> None:
    result = invoke("--debug", "ls", "--db", "sqlite://relative.db")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "sqlite:///relative.db" in result.stderr


def test_api_refuses_a_deeply_nested_spec_with_a_problem(tmp_path: Path) -> None:
    config = ApiConfig(database_url=f"sqlite:///{tmp_path / 'api.db'}", embedded_worker=False)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as client:
        r = client.post("/v1/agents", json={"yaml": DEEP})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "nested too deeply" in r.json()["detail"]
        deep_json = '{"spec": {"name": "x", "model": "scripted:x", "tools": %s}}' % (
            "[" * 50_000 + "]" * 50_000
        )
        r = client.post(
            "/v1/agents", content=deep_json, headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422), r.text
