"""Core of the `shell` built-in tool: run one command with `/bin/sh -c`.

The command runs in the tool sandbox (everruns.tools.sandbox: its own user,
mount and pid namespaces through bubblewrap) where it sees its working
directory read-write at its host path, the system read-only, a private /tmp
and nothing else: no other run's workspace, no database, no home directory, no
/proc of the worker. With the operator's `sandbox: none` it runs unconfined.

Its environment is minimal: PATH, HOME (= the working directory), LANG=C.UTF-8
and TMPDIR (the sandbox's private /tmp; unconfined: a fresh directory under the
system temp dir, removed afterwards), plus the variables the caller passes in
`env`. Nothing is inherited from the worker.

The command leads its own process group, and is SIGKILLed when its worker dies
(PR_SET_PDEATHSIG, and bwrap's `--die-with-parent`). The whole group is killed
with SIGKILL when the command times out, when the calling task is cancelled (a
cancelled run stops its commands), and when the shell exits while processes it
started in the background are still running (no daemons outlive the call).
Inside the sandbox even a process that leaves the group (`setsid -f`) dies with
the call: the pid namespace ends with its first process. With `registry`, the
group is recorded for the reaper (everruns.tools.reaper) while it runs.

stdout and stderr are each kept up to `max_output` bytes (the head), the rest
is read and dropped so the command never blocks on a full pipe, and a note
says how much was dropped.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from everruns.tools import reaper, sandbox
from everruns.tools.base import ToolError

SHELL = "/bin/sh"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
# After the shell is gone, how long the readers may take to drain the pipes.
_DRAIN_GRACE = 2.0


class _Capture:
    """The head of one output stream, up to `limit` bytes; counts what it drops."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = max(0, self.limit - len(self.data))
        if room:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # When cut, the head may end inside a multi-byte character: drop that tail.
        text = str(decoder.decode(bytes(self.data), final=not self.dropped))
        if self.dropped:
            text += f"\n[... output truncated: {self.dropped} more bytes not shown]"
        return text


class _ShellProtocol(asyncio.SubprocessProtocol):
    """Collects output and tells apart "the shell exited" from "the pipes closed".

    (`Process.wait()` of asyncio's high-level API waits for both, so it would hang
    on a background job still holding stdout.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_output: int):
        self.stdout = _Capture(max_output)
        self.stderr = _Capture(max_output)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        (self.stdout if fd == 1 else self.stderr).feed(chunk)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _environment(cwd: Path, tmpdir: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = {"PATH": BASE_PATH, "HOME": str(cwd), "LANG": "C.UTF-8", "TMPDIR": tmpdir}
    if extra:
        for key, value in extra.items():
            if not key or "=" in key or "\0" in key or "\0" in str(value):
                raise ToolError(f"invalid environment variable name or value: {key!r}")
            env[key] = str(value)
    return env


async def run_shell(
    command: str,
    *,
    cwd: Path,
    timeout: float = 60,
    max_output: int = 100_000,
    env: dict[str, str] | None = None,
    registry: Path | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `command` with /bin/sh -c in `cwd`.

    Returns {"exit_code", "stdout", "stderr", "timed_out", "truncated"}.
    `exit_code` is None when the command was killed for timing out; otherwise the
    shell's exit status (negative: killed by that signal). `registry` (a run's
    process registry) records the running group with `info` for the reaper.
    """
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise ToolError("the working directory does not exist")
    if "\0" in command:
        raise ToolError("the command contains a NUL byte")
    config = await asyncio.to_thread(sandbox.check)  # the first check starts bwrap
    where = str(cwd.resolve())
    argv = [SHELL, "-c", command]
    tmpdir = None
    if config.mode == "none":
        tmpdir = tempfile.mkdtemp(prefix="everruns-shell-")
    else:
        argv = sandbox.wrap(argv, chdir=where, read_write=[where])
    try:
        environment = _environment(Path(where), tmpdir or "/tmp", env)
        return await _run(argv, cwd, timeout, max(0, max_output), environment, registry, info or {})
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


async def _run(
    argv: list[str],
    cwd: Path,
    timeout: float,
    max_output: int,
    env: dict[str, str],
    registry: Path | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ShellProtocol(loop, max_output),
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=sandbox.die_with_parent,
        )
    except OSError as exc:
        raise ToolError(f"cannot start {SHELL}: {exc.strerror or exc}") from None
    pgid = transport.get_pid()  # start_new_session: the shell leads its own group
    note = reaper.record(registry, pgid, **info) if registry is not None else None
    timed_out = False
    try:
        # asyncio.wait never cancels the futures it waits on.
        done, _ = await asyncio.wait([protocol.exited], timeout=timeout)
        timed_out = not done
        # Timed out: kill everything. Exited: kill what it left running in the
        # background, so the pipes close and nothing outlives the call.
        _kill_group(pgid)
        await asyncio.wait([protocol.exited], timeout=_DRAIN_GRACE)
        # The pipes close once every writer is gone; a process that left the
        # group (setsid, unconfined only) may still hold one: stop waiting after a grace.
        await asyncio.wait([protocol.closed], timeout=_DRAIN_GRACE)
    except BaseException:
        # Cancelled (the run was cancelled or the worker is stopping): kill the group.
        _kill_group(pgid)
        raise
    finally:
        if not protocol.exited.done():
            _kill_group(pgid)
            # Let the killed shell be reaped (asyncio.wait does not cancel the future).
            await asyncio.wait([protocol.exited], timeout=_DRAIN_GRACE)
        transport.close()
        reaper.forget(note)
    return {
        "exit_code": None if timed_out else transport.get_returncode(),
        "stdout": protocol.stdout.text(),
        "stderr": protocol.stderr.text(),
        "timed_out": timed_out,
        "truncated": bool(protocol.stdout.dropped or protocol.stderr.dropped),
    }
