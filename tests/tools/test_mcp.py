"""MCP tools against real reference servers (no mocks, loopback only).

- `mcp-server-time` (PyPI, a dev dependency) over stdio.
- `@modelcontextprotocol/server-everything` (npm) over stdio and streamable
  HTTP. The session fixture installs it once into tests/.cache/npm with
  `npm install --prefix tests/.cache/npm --no-audit --no-fund
  @modelcontextprotocol/server-everything@<EVERYTHING_VERSION>` and reuses it.
  Without npm/node these tests fail (they do not skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from everruns.tools.base import ToolContext, ToolError
from everruns.tools.mcp import (
    MCPConnection,
    MCPConnectionError,
    MCPServerConfig,
    tools_from_listing,
)

pytestmark = pytest.mark.timeout(60)

EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"
EVERYTHING_VERSION = "2026.8.31"
NPM_CACHE = Path(__file__).parents[1] / ".cache" / "npm"
CTX = ToolContext(run_id="run_1", tool_call_id="c1", idempotency_key="run_1:c1", attempt=1)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def everything_js() -> Path:
    """server-everything's entry point, npm-installed once into tests/.cache/npm.

    Under a file lock: pytest-xdist workers share the cache, and a second worker must not
    start the server (or install again) while the first one's `npm install` is unpacking."""
    if shutil.which("node") is None:
        pytest.fail("node is required for the MCP server-everything tests but is not on PATH")
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    with open(NPM_CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install_everything()


def _install_everything() -> Path:
    entry = NPM_CACHE / "node_modules" / EVERYTHING_PACKAGE / "dist" / "index.js"
    manifest = entry.parent.parent / "package.json"
    if manifest.exists() and json.loads(manifest.read_text())["version"] == EVERYTHING_VERSION:
        return entry
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is required to install the MCP reference server "
            f"{EVERYTHING_PACKAGE}@{EVERYTHING_VERSION} but is not on PATH"
        )
    command = [
        npm,
        "install",
        "--prefix",
        str(NPM_CACHE),
        "--no-audit",
        "--no-fund",
        f"{EVERYTHING_PACKAGE}@{EVERYTHING_VERSION}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not entry.exists():
        pytest.fail(f"`{' '.join(command)}` failed:\n{done.stdout}\n{done.stderr}")
    return entry


@pytest.fixture(scope="session")
def time_server() -> list[str]:
    if importlib.util.find_spec("mcp_server_time") is None:
        pytest.fail("the dev dependency mcp-server-time is missing: pip install mcp-server-time")
    return [sys.executable, "-m", "mcp_server_time"]


@pytest.fixture
async def time_conn(time_server: list[str]) -> AsyncIterator[MCPConnection]:
    async with MCPConnection(MCPServerConfig(command=time_server)) as conn:
        yield conn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EverythingHTTP:
    """server-everything's streamable HTTP transport as a child process on one port."""

    def __init__(self, entry: Path, log: Path):
        self.entry = entry
        self.port = _free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        env = {**os.environ, "PORT": str(self.port)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["node", str(self.entry), "streamableHttp"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server-everything exited:\n{self.log.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        pytest.fail(f"server-everything did not listen on 127.0.0.1:{self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def everything_http(everything_js: Path, tmp_path: Path) -> Iterator[EverythingHTTP]:
    server = EverythingHTTP(everything_js, tmp_path / "everything-http.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _utc_now(text: str) -> datetime:
    data = json.loads(text)
    assert data["timezone"] == "UTC"
    moment = datetime.fromisoformat(data["datetime"])
    assert moment.utcoffset() == timedelta(0)
    return moment


# ------------------------------------------------------------------ config


def test_config_validation_names_the_field() -> None:
    assert MCPServerConfig(command=["srv"], timeout="2m").timeout == 120.0
    assert MCPServerConfig(url="http://127.0.0.1:1/mcp").effect == "at_most_once"
    cases = {
        "exactly one of `command` (stdio) or `url`": {},
        "exactly one of `command`": {"command": ["a"], "url": "http://127.0.0.1/mcp"},
        "`headers` applies only to `url`": {"command": ["a"], "headers": {"x": "1"}},
        "`env` applies only to `command`": {"url": "http://127.0.0.1/mcp", "env": {"A": "1"}},
        "`command` must name": {"command": []},
        "`url` must be": {"url": "ftp://x"},
        "`tool_prefix`": {"command": ["a"], "tool_prefix": "bad prefix"},
    }
    for expected, data in cases.items():
        with pytest.raises(ValidationError) as info:
            MCPServerConfig.model_validate(data)
        assert expected in str(info.value), (data, str(info.value))
    with pytest.raises(ValidationError) as info:
        MCPServerConfig(command=["a"], effect="sometimes")  # type: ignore[arg-type]
    assert info.value.errors()[0]["loc"] == ("effect",)
    with pytest.raises(ValidationError) as info:
        MCPServerConfig(command=["a"], timeout=0)
    assert info.value.errors()[0]["loc"] == ("timeout",)
    with pytest.raises(ValidationError) as info:
        MCPServerConfig.model_validate({"command": ["a"], "commandd": 1})
    assert info.value.errors()[0]["loc"] == ("commandd",)


# ------------------------------------------------------------------ mcp-server-time (stdio)


async def test_time_list_call_and_tools(time_conn: MCPConnection) -> None:
    listing = await time_conn.list_tools()
    names = {t["name"] for t in listing}
    assert {"get_current_time", "convert_time"} <= names
    entry = next(t for t in listing if t["name"] == "get_current_time")
    assert entry["description"]
    assert entry["input_schema"]["required"] == ["timezone"]

    before = datetime.now(UTC)
    text = await time_conn.call_tool("get_current_time", {"timezone": "UTC"})
    assert abs((_utc_now(text) - before).total_seconds()) < 120

    # The server's own rejection (isError) becomes a ToolError with its text.
    with pytest.raises(ToolError, match="Invalid timezone"):
        await time_conn.call_tool("get_current_time", {"timezone": "Nowhere/Atlantis"})
    with pytest.raises(ToolError, match="Unknown tool"):
        await time_conn.call_tool("no_such_tool", {})
    # Its stderr is captured, not mixed into ours.
    assert "get_current_time" in time_conn.stderr_tail()

    config = MCPServerConfig(command=["unused"], tool_prefix="time_", timeout="20s", effect="pure")
    tools = {t.name: t for t in tools_from_listing(config, listing, lambda: time_conn)}
    assert set(tools) == {"time_get_current_time", "time_convert_time"}
    now = tools["time_get_current_time"]
    assert now.effect == "pure" and now.timeout == 20.0
    assert now.schema.parameters["required"] == ["timezone"]
    _utc_now(await now.invoke({"timezone": "UTC"}, CTX))

    # Arguments are checked against the input schema before the server sees them.
    with pytest.raises(ToolError, match=r"invalid arguments for get_current_time: timezone: 5"):
        await now.invoke({"timezone": 5}, CTX)
    with pytest.raises(ToolError, match="'timezone' is a required property"):
        await now.invoke({}, CTX)
    convert = tools["time_convert_time"]
    out = await convert.invoke(
        {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}, CTX
    )
    assert "21:00" in out

    async def factory() -> MCPConnection:  # async factories work too
        return time_conn

    (only,) = tools_from_listing(
        MCPServerConfig(command=["unused"], include=["convert_time"]), listing, factory
    )
    assert only.name == "convert_time" and only.effect == "at_most_once"
    with pytest.raises(ValueError, match=r"`include` names tools .* does not have: nope"):
        tools_from_listing(MCPServerConfig(command=["x"], include=["nope"]), listing, factory)


async def test_time_killed_server_reconnects_before_sending(time_conn: MCPConnection) -> None:
    old = time_conn.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await _until(lambda: not time_conn.alive, "the connection to notice the death")
    # The call was never sent on the dead session, so even an at_most_once call
    # (retry_on_reconnect=False) goes out on a fresh server process.
    text = await time_conn.call_tool("get_current_time", {"timezone": "UTC"})
    _utc_now(text)
    assert time_conn.pid not in (None, old)
    assert time_conn.reconnects == 1
    await _until(lambda: _gone(old), "the old server process to be reaped")


@pytest.mark.parametrize("retry", [False, True], ids=["at_most_once", "retry"])
async def test_time_server_dies_during_call(time_conn: MCPConnection, retry: bool) -> None:
    pid = time_conn.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the call is sent but never answered ...
    call = asyncio.create_task(
        time_conn.call_tool("get_current_time", {"timezone": "UTC"}, retry_on_reconnect=retry)
    )
    await asyncio.sleep(0.3)
    assert not call.done()
    os.kill(pid, signal.SIGKILL)  # ... and then the server dies with it in flight
    if retry:
        _utc_now(await call)
        assert time_conn.pid not in (None, pid)
    else:
        with pytest.raises(ToolError) as info:
            await call
        message = str(info.value)
        assert "server connection was lost during get_current_time" in message
        assert "may or may not have run and was not retried" in message
        assert f"server process {pid} ended" in message
        # The next call reconnects.
        _utc_now(await time_conn.call_tool("get_current_time", {"timezone": "UTC"}))
        assert time_conn.pid not in (None, pid)
    assert time_conn.reconnects == 1


async def test_start_and_close_from_other_tasks(time_server: list[str]) -> None:
    conn = MCPConnection(MCPServerConfig(command=time_server))
    await asyncio.create_task(conn.start())  # the opening task ends here
    pid = conn.pid
    assert pid is not None
    calls = [conn.call_tool("get_current_time", {"timezone": "UTC"}) for _ in range(4)]
    for text in await asyncio.gather(*calls):  # concurrent calls share one session
        _utc_now(text)
    await asyncio.create_task(conn.close())
    await _until(lambda: _gone(pid), "the server process to end after close")
    assert not conn.alive
    with pytest.raises(MCPConnectionError, match="closed"):
        await conn.call_tool("get_current_time", {"timezone": "UTC"})


async def test_start_failures_are_clear(tmp_path: Path) -> None:
    crash = MCPServerConfig(
        command=[sys.executable, "-c", "import sys; sys.stderr.write('boom: no API key\\n')"]
    )
    with pytest.raises(MCPConnectionError, match=r"could not connect.*boom: no API key"):
        await MCPConnection(crash).start()
    missing = MCPServerConfig(command=["everruns-no-such-mcp-server"])
    with pytest.raises(MCPConnectionError, match=r"`command`: .* was not found on PATH"):
        await MCPConnection(missing).start()
    silent = MCPServerConfig(  # reads stdin, never answers the handshake
        command=[sys.executable, "-c", "import sys; sys.stdin.read()"], connect_timeout=0.5
    )
    with pytest.raises(MCPConnectionError, match=r"not ready within 0\.5s \(connect_timeout\)"):
        await MCPConnection(silent).start()


# ------------------------------------------------------------------ server-everything


async def _check_everything(conn: MCPConnection) -> list[dict[str, Any]]:
    listing = await conn.list_tools()
    names = {t["name"] for t in listing}
    assert {"echo", "get-sum", "get-tiny-image"} <= names, names
    assert await conn.call_tool("echo", {"message": "hello everruns"}) == "Echo: hello everruns"
    assert await conn.call_tool("get-sum", {"a": 2, "b": 40}) == "The sum of 2 and 40 is 42."
    image = await conn.call_tool("get-tiny-image", {})
    assert "[image: image/png, " in image and "bytes]" in image
    return listing


async def test_everything_stdio(everything_js: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVERRUNS_TEST_SECRET", "must-not-leak")
    config = MCPServerConfig(
        command=["node", str(everything_js), "stdio"], env={"EVERRUNS_TEST_VISIBLE": "yes"}
    )
    async with MCPConnection(config) as conn:
        listing = await _check_everything(conn)
        env = json.loads(await conn.call_tool("get-env", {}))
        assert env["EVERRUNS_TEST_VISIBLE"] == "yes"
        assert "EVERRUNS_TEST_SECRET" not in env  # minimal environment + `env` only
        links = await conn.call_tool("get-resource-links", {"count": 2})
        assert links.count("[resource link: ") == 2 and "<demo://resource/" in links
        ref = await conn.call_tool(
            "get-resource-reference", {"resourceType": "Text", "resourceId": 1}
        )
        assert "[resource <demo://resource/dynamic/text/1>]\nResource 1: " in ref
        assert set(env) <= {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"} | {
            "EVERRUNS_TEST_VISIBLE",
            "EVERRUNS_MCP_CONNECTION",
            "PWD",  # set by the sandbox (bwrap --chdir) to the server's working directory
        }
        assert env["HOME"] == "/tmp"  # the sandbox's private /tmp, not the worker's home

        tools = {t.name: t for t in tools_from_listing(config, listing, lambda: conn)}
        assert await tools["get-sum"].invoke({"a": 1, "b": 2}, CTX) == "The sum of 1 and 2 is 3."
        with pytest.raises(ToolError, match="invalid arguments for get-sum: b: 'x' is not of type"):
            await tools["get-sum"].invoke({"a": 1, "b": "x"}, CTX)

        # A per-call timeout, and a caller that gives up (as the runner's wait_for
        # does): both leave the connection usable.
        slow = {"duration": 5, "steps": 5}
        with pytest.raises(ToolError, match=r"did not answer within 0\.3s"):
            await conn.call_tool("trigger-long-running-operation", slow, timeout=0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.call_tool("trigger-long-running-operation", slow), 0.3)
        assert await conn.call_tool("echo", {"message": "still here"}) == "Echo: still here"

        # Closing while a call is in flight fails that call; it is not resent.
        call = asyncio.create_task(conn.call_tool("trigger-long-running-operation", slow))
        await asyncio.sleep(0.2)
        pid = conn.pid
        assert pid is not None
        await conn.close()
        with pytest.raises(MCPConnectionError, match="closed during trigger-long-running"):
            await call
        await _until(lambda: _gone(pid), "the server process to end after close")


async def test_everything_streamable_http(everything_http: EverythingHTTP) -> None:
    config = MCPServerConfig(url=everything_http.url, headers={"X-Everruns-Test": "1"})
    async with MCPConnection(config) as conn:
        assert conn.pid is None
        assert conn.server_info is not None
        await _check_everything(conn)

        # The server restarts and forgets our session: it refuses the call without
        # running it, so the call goes out again on a new session.
        everything_http.kill()
        everything_http.start()
        assert await conn.call_tool("echo", {"message": "after restart"}) == "Echo: after restart"
        assert conn.reconnects == 1

        # The server is gone: the call fails clearly, and so does reconnecting.
        everything_http.kill()
        with pytest.raises(ToolError, match="server connection was lost during echo"):
            await conn.call_tool("echo", {"message": "nobody home"})
        with pytest.raises(MCPConnectionError, match="could not connect: ConnectError"):
            await conn.call_tool("echo", {"message": "nobody home"})

        # It comes back: the next call reconnects.
        everything_http.start()
        assert await conn.call_tool("get-sum", {"a": 1, "b": 1}) == "The sum of 1 and 1 is 2."


async def test_a_tool_calls_trace_context_reaches_the_mcp_server_in_meta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from everruns.tools import sandbox

    monkeypatch.setattr(sandbox, "_config", sandbox.current())  # restored after the test
    sandbox.configure("none")  # the server is ours; the sandbox is tested elsewhere
    server = Path(__file__).parents[1] / "tooling" / "traced_mcp.py"
    parent = "00-" + "1f" * 16 + "-" + "2e" * 8 + "-01"
    async with MCPConnection(MCPServerConfig(command=[sys.executable, str(server)])) as conn:
        assert await conn.call_tool("show_meta", {}, 20, trace={"traceparent": parent}) == parent
        assert await conn.call_tool("show_meta", {}, 20) == ""
