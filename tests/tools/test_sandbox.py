"""The tool sandbox, tool processes dying with their worker, and safe workspace writes.

Real worker processes (`everruns worker`), real bubblewrap sandboxes, real SIGKILL:

1. a shell call cannot read the worker's environment through /proc, the parent of
   its workspace, another run's workspace or the SQLite file, and cannot write
   outside its workspace; a `setsid -f` child is gone after the call; the worker's
   own environment no longer holds the provider key and it is not dumpable;
2. a worker SIGKILLed during `sleep 3; echo side-effect >> FILE` never gets the
   side effect done, and the worker that takes the run over journals the reap;
3. the reaper, across processes: a live group recorded by another process is killed
   when a worker claims the run (journaled `killed: true`); a recycled pid is not;
4. without bubblewrap the shell refuses to run, unless the operator says `sandbox: none`;
5. write_file/edit_file refuse a hard link to a file outside the workspace, and path
   errors never show an absolute host path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_tools_engine import KILLED, call, harness, result_of

from everruns.core.events import INTERRUPTED_MESSAGE, RUN_STARTED, TOOL_COMPLETED, Event
from everruns.tools import reaper
from everruns.tools.base import ToolContext, ToolError
from everruns.tools.builtins import edit_file, read_file, write_file
from everruns.tools.shell import run_shell
from helpers import write_agent

pytestmark = pytest.mark.timeout(120)

SECRET = f"sk-test-{uuid.uuid4().hex}"


def _marker() -> str:
    """A unique `sleep` duration, to find the process on the host by its command line."""
    return f"30.{uuid.uuid4().int % 10**9:09d}"


def _host_pids(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and reaper.start_time(int(entry)) is not None:
            found.append(int(entry))
    return found


async def _until_gone(marker: str, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        left = _host_pids(marker)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


def _sleeping(marker: str) -> bool:
    """Is a `sleep MARKER` process itself running (not just its sandbox starting)?"""
    for pid in _host_pids(marker):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                return True
        except OSError:
            continue
    return False


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _none_exist(*paths: str | Path) -> bool:
    return not any(os.path.exists(p) for p in paths)


def _shell_result(events: list[Event], call_id: str) -> dict[str, Any]:
    event = result_of(events, call_id)
    assert event.type == TOOL_COMPLETED, event.data
    result: dict[str, Any] = json.loads(event.data["output"])
    return result


# ------------------------------------------------------------------ 1. confinement


async def test_shell_is_confined_to_its_workspace(tmp_path: Path, sqlite_url: str) -> None:
    db_file = tmp_path / "everruns.db"
    outside = tmp_path / "outside.txt"
    escape = _marker()
    other_spec = write_agent(
        tmp_path / "other.yaml",
        [
            {"tool_calls": [call("write_file", path="mine.txt", content="other-run-data\n")]},
            {"text": "written"},
        ],
        [{"builtin": "workspace"}],
        name="other",
    )
    async with harness(tmp_path, sqlite_url) as h:
        other = h.start(other_spec)
        worker = h.worker(OPENAI_API_KEY=SECRET, EVERRUNS_MASTER_KEY=SECRET)
        await h.wait_status(other, "completed")
        root = tmp_path / "workspaces"
        assert (root / other / "mine.txt").read_text() == "other-run-data\n"
        probes = {
            "environ": "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; ls /proc | grep -c '^[0-9]'",
            "worker": f"cat /proc/{worker.pid}/environ /proc/{worker.pid}/cmdline",
            "parent": "ls -a ..; cat ../*/mine.txt",
            "database": f"cat {db_file}; ls -la {db_file}",
            "write": f"echo x > {outside}; echo y > /etc/everruns-evil; echo z > /evil;"
            " echo w > ~/inside.txt; ls /root",
            "setsid": f"setsid -f sleep {escape}; echo started",
        }
        spec = write_agent(
            tmp_path / "probe.yaml",
            [
                {"tool_calls": [call("shell", command=cmd) for cmd in probes.values()]},
                {"tool_calls": [call("worker_view", name="OPENAI_API_KEY")]},
                {"text": "probed"},
            ],
            [{"builtin": "shell"}, {"python": "sandboxtools:worker_view"}],
            name="probe",
        )
        run_id = h.start(spec)
        await h.wait_status(run_id, "completed")
        events = await h.events(run_id)
        results = {name: _shell_result(events, f"call_1_{i}") for i, name in enumerate(probes, 1)}
        # /proc is the sandbox's own: a handful of processes, none holding the secret.
        environ = results["environ"]
        assert SECRET not in json.dumps(results)
        assert int(environ["stdout"].splitlines()[-1]) <= 6, environ
        assert "OPENAI_API_KEY" not in environ["stdout"]
        assert "EVERRUNS_DATABASE_URL" not in environ["stdout"]
        seen = results["worker"]
        assert seen["exit_code"] != 0 and seen["stdout"] == "", seen  # no such process here

        # The workspace's parent shows only this run's folder; the other run's is absent.
        parent = results["parent"]
        assert parent["stdout"].split() == [".", "..", run_id], parent
        assert "other-run-data" not in parent["stdout"] and parent["exit_code"] != 0

        # The database file does not exist in the sandbox.
        database = results["database"]
        assert database["exit_code"] != 0 and "No such file" in database["stderr"]
        assert database["stdout"] == ""

        # Writes outside the workspace fail; HOME is the workspace, /root is absent.
        write = results["write"]
        # (`outside` lies under /tmp, the sandbox's private one: written there, never here.)
        assert _none_exist(outside, "/etc/everruns-evil", "/evil")
        assert write["stderr"].count("Read-only file system") == 2, write
        assert "cannot access '/root'" in write["stderr"]
        assert (root / run_id / "inside.txt").read_text() == "w\n"

        # setsid -f escaped the process group, but not the pid namespace.
        assert results["setsid"]["stdout"] == "started\n"
        assert await _until_gone(escape) == []

        # The worker took the provider key out of its environment and is not dumpable.
        view = json.loads(result_of(events, "call_2_1").data["output"])
        assert view == {"in_environ": False, "dumpable": 0}
        h.assert_clean_logs()


# ------------------------------------------------------------------ 2. die with the worker


async def test_sigkilled_worker_tool_side_effect_never_happens(tmp_path: Path, db_url: str) -> None:
    marker = f"3.{uuid.uuid4().int % 10**6:06d}"  # sleeps 3 s, findable on the host
    spec = write_agent(
        tmp_path / "side.yaml",
        [
            {
                "tool_calls": [
                    call("shell", command=f"sleep {marker}; echo side-effect >> side.txt")
                ]
            },
            {"text": "after the crash"},
        ],
        [{"builtin": "shell"}],
        name="side-effect",
    )
    async with harness(tmp_path, db_url) as h:
        run_id = h.start(spec)
        workspace = tmp_path / "workspaces" / run_id
        registry = reaper.registry_for(workspace)
        first = h.worker()
        deadline = time.monotonic() + 30
        # The call is under way: its `sleep` runs, and its group is recorded.
        while not (_sleeping(marker) and _entries(registry)):
            assert time.monotonic() < deadline, h.logs()
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == KILLED
        assert await _until_gone(marker, within=2.0) == []
        await asyncio.sleep(5)  # well past the 3 s sleep: the echo would have run by now
        assert not (workspace / "side.txt").exists()
        assert len(_entries(registry)) == 1  # the dead worker's note is still there

        h.worker()
        await h.wait_status(run_id, "completed")
        events = await h.events(run_id)
        starts = [e for e in events if e.type == RUN_STARTED]
        assert len(starts) == 2 and "reaped" not in starts[0].data
        (reaped,) = starts[1].data["reaped"]
        assert reaped["call_id"] == "call_1_1" and reaped["worker_pid"] == first.pid
        assert reaped["killed"] is False  # it had died with its worker already
        assert result_of(events, "call_1_1").data["error"] == INTERRUPTED_MESSAGE
        assert not registry.exists()
        assert not (workspace / "side.txt").exists()


# ------------------------------------------------------------------ 3. the reaper


def _spawn_group(marker: str) -> int:
    """A process group (its own session) left running by a process that then exits:
    what a worker that lost its lease but still lives leaves behind."""
    code = (
        "import subprocess\n"
        "D = subprocess.DEVNULL\n"
        f"p = subprocess.Popen(['sleep', '{marker}'], start_new_session=True, stdin=D, stdout=D,"
        " stderr=D)\n"
        "print(p.pid)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return int(done.stdout.strip())


async def test_takeover_reaps_a_live_leftover_group(tmp_path: Path, sqlite_url: str) -> None:
    spec = write_agent(tmp_path / "r.yaml", [{"text": "clean"}], [{"builtin": "shell"}], name="r")
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        registry = reaper.registry_for(tmp_path / "workspaces" / run_id)
        live, recycled = _marker(), _marker()
        live_pid = _spawn_group(live)
        recycled_pid = _spawn_group(recycled)
        reaper.record(registry, live_pid, call_id="call_9_1", worker_pid=1)
        note = reaper.record(registry, recycled_pid, call_id="call_9_2", worker_pid=1)
        assert note is not None
        # As if the pid now belonged to another process (another start time): never killed.
        data = json.loads(note.read_text())
        note.write_text(json.dumps({**data, "start": data["start"] - 1}))

        h.worker()
        await h.wait_status(run_id, "completed")
        (started,) = [e for e in await h.events(run_id) if e.type == RUN_STARTED]
        reaped = {r["call_id"]: r for r in started.data["reaped"]}
        assert reaped["call_9_1"] == {
            "pid": live_pid,
            "call_id": "call_9_1",
            "worker_pid": 1,
            "killed": True,
        }
        assert reaped["call_9_2"]["killed"] is False
        assert await _until_gone(live) == []
        assert _host_pids(recycled) == [recycled_pid]  # untouched
        os.kill(recycled_pid, signal.SIGKILL)


# ------------------------------------------------------------------ 4. no sandbox, no shell


def _run_in_subprocess(code: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_without_bubblewrap_the_shell_refuses_unless_sandbox_none(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with the shell's tools but no bwrap
    bin_dir.mkdir()
    for name in ("sh", "cat", "echo"):
        (bin_dir / name).symlink_to(f"/bin/{name}")
    script = (
        "import asyncio, sys\n"
        "from everruns.tools import sandbox\n"
        "from everruns.tools.shell import run_shell\n"
        "from everruns.tools.base import ToolError\n"
        "if sys.argv[-1] == 'none': sandbox.configure('none')\n"
        "try:\n"
        f"    r = asyncio.run(run_shell('echo ran', cwd={str(tmp_path)!r}))\n"
        "    print('RESULT', r['stdout'].strip())\n"
        "except ToolError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    refused = _run_in_subprocess(script, str(bin_dir))
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith("REFUSED the tool sandbox cannot start: bubblewrap")
    assert "`sandbox: none`" in refused.stdout
    unconfined = _run_in_subprocess(script, str(bin_dir), "none")
    assert unconfined.stdout.strip() == "RESULT ran", unconfined.stderr


def test_settings_sandbox_values() -> None:
    from everruns.settings import Settings

    assert Settings().sandbox == "bwrap"
    assert Settings.model_validate({"sandbox": "none"}).sandbox == "none"
    with pytest.raises(ValueError, match="sandbox"):
        Settings.model_validate({"sandbox": "docker"})


# ------------------------------------------------------------------ 5. workspace writes


def _ctx(root: Path) -> ToolContext:
    return ToolContext(
        run_id="run_x", tool_call_id="c1", idempotency_key="run_x:c1", attempt=1, workspace=root
    )


def test_write_file_refuses_hard_links_out_of_the_workspace(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("original\n")
    os.link(outside, root / "linked.txt")  # what an unconfined shell could make
    ctx = _ctx(root)
    for attempt in (
        lambda: write_file("linked.txt", "overwritten", ctx),
        lambda: edit_file("linked.txt", "original", "edited", ctx),
    ):
        with pytest.raises(ToolError, match=r"'linked\.txt' is a hard link") as info:
            attempt()
        assert str(tmp_path) not in str(info.value)
    assert outside.read_text() == "original\n"
    # An ordinary file is replaced (a new file renamed over it), not written through.
    assert write_file("plain.txt", "one", ctx) == "wrote 3 characters to plain.txt"
    inode = (root / "plain.txt").stat().st_ino
    write_file("plain.txt", "two", ctx)
    assert (root / "plain.txt").read_text() == "two"
    assert (root / "plain.txt").stat().st_ino != inode
    (root / "plain.txt").chmod(0o755)
    edit_file("plain.txt", "two", "three", ctx)
    assert (root / "plain.txt").read_text() == "three"
    assert (root / "plain.txt").stat().st_mode & 0o777 == 0o755  # the mode is kept
    assert sorted(p.name for p in root.iterdir()) == ["linked.txt", "plain.txt"]


def test_path_errors_name_no_host_path(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "folder").mkdir(parents=True)
    (root / "loop").symlink_to("loop")
    (root / "bin.dat").write_bytes(b"\xff\xfe\x00")
    ctx = _ctx(root)
    attempts = {
        "empty": lambda: write_file("", "x", ctx),
        "dot": lambda: write_file(".", "x", ctx),
        "folder": lambda: write_file("folder", "x", ctx),
        "loop": lambda: write_file("loop", "x", ctx),
        "read-folder": lambda: read_file("folder", ctx),
        "edit-binary": lambda: edit_file("bin.dat", "a", "b", ctx),
        "escape": lambda: write_file("../x", "x", ctx),
    }
    messages = {}
    for name, attempt in attempts.items():
        with pytest.raises(ToolError) as info:
            attempt()
        messages[name] = str(info.value)
    for name, message in messages.items():
        assert str(tmp_path) not in message and "/tmp" not in message, (name, message)
    assert messages["empty"] == "'.' is a folder, not a file"
    assert messages["folder"] == "'folder' is a folder, not a file"
    assert messages["edit-binary"] == "'bin.dat': not UTF-8 text"


async def test_shell_errors_name_no_host_path(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as info:
        await run_shell("true", cwd=tmp_path / "missing")
    assert str(tmp_path) not in str(info.value)
