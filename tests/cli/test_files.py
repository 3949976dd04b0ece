"""Files into a run (--file, --dir, the API's blob uploads) and out of it (the API's
files routes and zip, `everruns workspace --export` with and without --server)."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from everruns import Client
from everruns.client import ApiError
from everruns.core.files import excluded
from everruns.store import Store
from helpers import Server, cli, env_for, write_agent

pytestmark = pytest.mark.timeout(120)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def make_project(root: Path) -> Path:
    project = root / "project"
    (project / "pkg" / "__pycache__").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (project / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00junk")
    (project / "stray.pyc").write_bytes(b"\x00junk")
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "README.md").write_text("# project\n")
    return project


def test_exclude_patterns() -> None:
    defaults = ["__pycache__/", "*.pyc", ".git/"]
    assert excluded("pkg/__pycache__/m.pyc", defaults)
    assert excluded("a.pyc", defaults)
    assert excluded(".git/HEAD", defaults)
    assert not excluded("pkg/mod.py", defaults)
    assert not excluded("git/notes.txt", defaults)
    assert excluded("build/out.o", ["build/"]) and excluded("x/y.log", ["x/*.log"])


async def wait_done(store: Store, run_id: str) -> None:
    for _ in range(600):
        row = await store.get_run(run_id)
        if row.status in ("completed", "failed"):
            assert row.status == "completed", row.error
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


async def test_files_in_and_out_locally_and_through_the_server(tmp_path: Path, db_url: str) -> None:
    project = make_project(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from the host\n")
    spec = write_agent(
        tmp_path / "files.yaml",
        [
            {
                "tool_calls": [
                    call("read_file", path="pkg/mod.py"),
                    call("write_file", path="out/result.txt", content="VALUE is 1"),
                    call("write_file", path="pkg/__pycache__/new.pyc", content="junk"),
                ]
            },
            {"text": "done"},
        ],
        [{"builtin": "workspace"}],
        max_parallel_tools=1,
    )
    env = env_for(db_url, EVERRUNS_WORKSPACE_ROOT=str(tmp_path / "ws"))
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    store = await Store.open(db_url)
    try:
        # In through the database (--db), and through the API (blob uploads).
        local = cli(
            "start",
            str(spec),
            "--input",
            "go",
            "--file",
            str(notes),
            "--dir",
            str(project),
            env=env,
            cwd=tmp_path,
        )
        assert local.returncode == 0, local.stderr
        remote = cli(
            "start",
            str(spec),
            "--input",
            "go",
            "--dir",
            str(project),
            "--server",
            server.url,
            env=env,
            cwd=tmp_path,
        )
        assert remote.returncode == 0, remote.stderr
        run_local, run_remote = local.stdout.strip(), remote.stdout.strip()
        await wait_done(store, run_local)
        await wait_done(store, run_remote)

        client = Client(server.url)  # the SDK's files methods over the API routes
        listing = client.runs.files(run_local)
        by_path = {e["path"]: e for e in listing}
        assert set(by_path) == {"notes.txt", "README.md", "pkg/mod.py", "out/result.txt"}
        assert by_path["pkg/mod.py"]["seq"] == 1 and by_path["pkg/mod.py"]["step"] == 0
        assert by_path["out/result.txt"]["step"] == 1
        assert by_path["out/result.txt"]["call_id"] == "call_1_2"
        assert by_path["notes.txt"]["size"] == len("hello from the host\n")
        events = await store.load_events(run_local)
        read = next(e for e in events if e.data.get("call_id") == "call_1_1" and "output" in e.data)
        assert read.data["output"] == "VALUE = 1"  # the tool saw the handed-in file
        remote_paths = {e["path"] for e in client.runs.files(run_remote)}
        assert remote_paths == {"README.md", "pkg/mod.py", "out/result.txt"}

        assert client.runs.file(run_local, "out/result.txt") == b"VALUE is 1"
        with pytest.raises(ApiError) as missing:
            client.runs.file(run_local, "nope.txt")
        assert missing.value.status == 404
        archive = zipfile.ZipFile(io.BytesIO(client.runs.files_zip(run_local)))
        assert sorted(archive.namelist()) == sorted(by_path)
        assert archive.read("notes.txt") == b"hello from the host\n"
        client.close()

        # Out with the CLI: through the server (refusing a non-empty directory), and
        # through the database.
        target = tmp_path / "export-remote"
        args = ("--server", server.url)
        done = cli("workspace", run_local, "--export", str(target), *args, env=env)
        assert done.returncode == 0, done.stderr
        assert (target / "out" / "result.txt").read_text() == "VALUE is 1"
        assert (target / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
        assert not (target / "pkg" / "__pycache__").exists()
        (target / "out" / "result.txt").write_text("changed by hand")
        refused = cli("workspace", run_local, "--export", str(target), *args, env=env)
        assert refused.returncode != 0
        assert "not empty" in refused.stderr + refused.stdout
        assert (target / "out" / "result.txt").read_text() == "changed by hand"
        forced = cli("workspace", run_local, "--export", str(target), "--force", *args, env=env)
        assert forced.returncode == 0, forced.stderr
        assert (target / "out" / "result.txt").read_text() == "VALUE is 1"
        local_target = tmp_path / "export-local"
        done = cli("workspace", run_remote, "--export", str(local_target), env=env)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in local_target.rglob("*") if p.is_file()) == [
            "README.md",
            "mod.py",
            "result.txt",
        ]
    finally:
        server.stop()
        await store.close()


def test_api_refuses_files_without_a_blob_or_outside_the_workspace(
    tmp_path: Path, db_url: str
) -> None:
    spec = {"name": "f", "model": {"provider": "scripted", "responses": [{"text": "ok"}]}}
    server = Server(env_for(db_url), "--no-worker", log=tmp_path / "server.log")
    try:
        sha = httpx.post(f"{server.url}/v1/blobs", content=b"data").json()["sha256"]
        for files, words in (
            ({"a.txt": "0" * 64}, "no uploaded blob"),
            ({"../x": sha}, "relative"),
        ):
            reply = httpx.post(f"{server.url}/v1/runs", json={"spec": spec, "files": files})
            assert reply.status_code == 422 and words in reply.json()["detail"], reply.text
        ok = httpx.post(f"{server.url}/v1/runs", json={"spec": spec, "files": {"a/b.txt": sha}})
        assert ok.status_code == 201, ok.text
        run_id = ok.json()["id"]
        listing = httpx.get(f"{server.url}/v1/runs/{run_id}/files").json()
        assert [(e["path"], e["size"], e["step"]) for e in listing] == [("a/b.txt", 4, 0)]
    finally:
        server.stop()
