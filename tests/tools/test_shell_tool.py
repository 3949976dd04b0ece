"""The shell tool core: real /bin/sh processes in the bubblewrap sandbox, real signals."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from everruns.tools.base import ToolError
from everruns.tools.shell import run_shell


def _alive(pid: int, marker: str | None = None) -> bool:
    """A zombie counts as dead: it no longer runs (PID 1 may be slow to reap it). With a
    marker, a pid whose command line lacks it is another process (pids are reused: the
    suite starts thousands of processes and pid_max may be 32768)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and (marker is None or marker.encode() in cmdline)


async def _wait_dead(pids: list[int], marker: str, within: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p, marker)]
        if not alive:
            return []
        await asyncio.sleep(0.05)
    return [p for p in pids if _alive(p, marker)]


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _same_dir(a: str | Path, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def _host_pids(marker: str) -> list[int]:
    """Host pids of live processes whose command line contains `marker` (the shell
    runs in its own pid namespace, so its `$$` and `$!` are not host pids)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and _alive(int(entry)):
                found.append(int(entry))
    return found


async def _wait_host_pids(
    marker: str, count: int, within: float = 5.0, sleeping: bool = False
) -> list[int]:
    """`count` live processes with `marker`; `sleeping`: `sleep` processes themselves."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = [p for p in _host_pids(marker) if not sleeping or _is_sleep(p)]
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {count} processes with {marker!r}")


async def test_exit_code_stdout_stderr(tmp_path: Path) -> None:
    result = await run_shell("echo out; echo err >&2; exit 3", cwd=tmp_path)
    assert result == {
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "timed_out": False,
        "truncated": False,
    }
    ok = await run_shell("true", cwd=tmp_path)
    assert ok["exit_code"] == 0 and ok["stdout"] == "" and ok["stderr"] == ""
    missing = await run_shell("no-such-command-xyz", cwd=tmp_path)
    assert missing["exit_code"] == 127 and "not found" in missing["stderr"]


async def test_pipes_and_stdin_is_empty(tmp_path: Path) -> None:
    result = await run_shell("printf 'b\\na\\n' | sort; cat", cwd=tmp_path, timeout=5)
    assert result["stdout"] == "a\nb\n" and result["exit_code"] == 0


async def test_cwd_and_home(tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("here")
    result = await run_shell('pwd; cat marker.txt; echo; echo "$HOME"; touch made', cwd=tmp_path)
    lines = result["stdout"].splitlines()
    assert _same_dir(lines[0], tmp_path)
    assert lines[1] == "here"
    assert _same_dir(lines[2], tmp_path)
    assert (tmp_path / "made").exists()


async def test_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = await run_shell("env", cwd=tmp_path, env={"EXTRA": "given"})
    env = dict(line.split("=", 1) for line in result["stdout"].splitlines() if "=" in line)
    assert "SECRET_TOKEN" not in env
    assert "hunter2" not in result["stdout"]
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8"
    assert env["EXTRA"] == "given"
    assert _same_dir(env["HOME"], tmp_path)
    assert env["TMPDIR"] == "/tmp"  # the sandbox's private /tmp
    # Only what we set (the shell itself may add PWD, SHLVL, _ and the like).
    assert set(env) - {"PWD", "OLDPWD", "SHLVL", "_"} == {"PATH", "HOME", "LANG", "TMPDIR", "EXTRA"}


async def test_tmpdir_is_writable_and_private(tmp_path: Path) -> None:
    marker = f"everruns-tmp-{uuid.uuid4().hex}"
    result = await run_shell(f"echo hi > /tmp/{marker} && cat /tmp/{marker}", cwd=tmp_path)
    assert result["stdout"] == "hi\n"
    assert not _exists(f"/tmp/{marker}")  # not the host's /tmp ...
    again = await run_shell(f"cat /tmp/{marker}", cwd=tmp_path)
    assert again["exit_code"] != 0  # ... and not kept for the next call


async def test_output_cap_keeps_the_head(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run_shell(
        "seq 1 200000; seq 1 50000 >&2", cwd=tmp_path, max_output=1000, timeout=20
    )
    assert time.monotonic() - started < 10
    assert result["exit_code"] == 0 and result["truncated"] is True
    head, _, note = result["stdout"].partition("\n[... output truncated: ")
    assert len(head.encode()) <= 1000
    assert head.startswith("1\n2\n3\n")
    expected_total = sum(len(f"{i}\n") for i in range(1, 200001))
    assert note == f"{expected_total - 1000} more bytes not shown]"
    assert result["stderr"].startswith("1\n2\n") and "truncated" in result["stderr"]


async def test_cap_does_not_split_utf8(tmp_path: Path) -> None:
    result = await run_shell("printf 'aé%.0s' $(seq 1 100)", cwd=tmp_path, max_output=5)
    # 5 bytes = 'a', 'é' (2 bytes), 'a' and the first byte of the next 'é': dropped.
    assert result["stdout"] == "aéa\n[... output truncated: 295 more bytes not shown]"


def _is_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0")
    except OSError:
        return False


def _marker() -> str:
    """A unique `sleep` duration: its command line finds the process on the host."""
    return f"30.{uuid.uuid4().int % 10**9:09d}"


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    m = _marker()
    started = time.monotonic()
    task = asyncio.create_task(
        run_shell(
            f"sleep {m} & sh -c 'sleep {m}' & echo started; exec sleep {m}",
            cwd=tmp_path,
            timeout=1,
        )
    )
    found = await _wait_host_pids(m, 3)
    result = await task
    elapsed = time.monotonic() - started
    assert result["timed_out"] is True and result["exit_code"] is None
    assert result["stdout"] == "started\n"
    assert elapsed < 5
    assert await _wait_dead(found, m) == []


async def test_background_processes_do_not_outlive_the_call(tmp_path: Path) -> None:
    m = _marker()
    started = time.monotonic()
    task = asyncio.create_task(
        run_shell(f"sleep {m} & setsid -f sleep {m}; sleep 0.5; echo done", cwd=tmp_path)
    )
    found = await _wait_host_pids(m, 2)
    result = await task
    assert time.monotonic() - started < 5
    assert result["exit_code"] == 0 and result["timed_out"] is False
    assert result["stdout"] == "done\n"
    assert await _wait_dead(found, m) == []


async def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    m = _marker()
    task = asyncio.create_task(run_shell(f"sleep {m} & exec sleep {m}", cwd=tmp_path, timeout=60))
    # Both sleeps running (not just the sandbox starting): a cancel during bwrap's own
    # start-up is a separate, known gap (docs/security.md, Sandbox).
    found = await _wait_host_pids(m, 2, sleeping=True)
    assert all(_alive(p) for p in found)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_dead(found, m) == []


async def test_bad_working_directory(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        await run_shell("true", cwd=tmp_path / "missing")
