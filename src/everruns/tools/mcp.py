"""MCP server tools: connect to a Model Context Protocol server, list its tools, call them.

Built on the official `mcp` SDK (2.x). Two transports:

- stdio (`command`): the server runs as a child process. Its environment is the
  SDK's minimal default (`HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM`, `USER` on
  POSIX) with `env` merged over it, so the worker's own secrets (API keys,
  database URLs) never reach the server unless `env` passes them. One more
  variable, `EVERRUNS_MCP_CONNECTION`, marks the process so that `pid` can find
  it. The server's stderr goes to a private temporary file whose tail appears in
  connection errors (it is emptied when it passes 1 MiB). The server runs in the
  tool sandbox (everruns.tools.sandbox, see `_confine`): it sees the system, the
  worker's Python and its own files read-only, its `cwd` read-write, a private
  /tmp as HOME, and dies with its worker.
- streamable HTTP (`url`), with optional `headers` sent on every request.

Task ownership: anyio cancel scopes and task groups are bound to the task that
entered them, so each live MCP session is owned by one background asyncio task
that enters the SDK's context managers (transport, `mcp.Client`) and exits them.
`start`, `close`, `list_tools` and `call_tool` may therefore be called from any
task of the event loop the connection was first started on. Close the
connection (or use it as `async with`) before that loop ends: a loop torn down
under a live session cancels the owner task natively, and the SDK then cannot
promise to stop the server process.

Lost connections: if the session ended (the server process died, the HTTP
server went away or forgot the session), the next call reconnects once. Whether
the call itself is sent again depends on what is known about its delivery:

- the connection was already known to be dead before the call was sent, or the
  HTTP server refused our session id (404 as the spec says, or 400 as servers
  built on the TypeScript SDK's example do): the call never ran, so it is sent
  on the new session whatever `retry_on_reconnect` says;
- the connection broke while the call was in flight: the server may have run
  it, so it is repeated on a new session only with `retry_on_reconnect=True`,
  and otherwise a `ToolError` says the connection was lost (the next call then
  reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TextIO, cast

import anyio
import httpx2
import jsonschema
import mcp.types as mcp_types
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from everruns import __version__
from everruns.spec import Effect, parse_duration
from everruns.tools import sandbox
from everruns.tools.base import Tool, ToolContext, ToolError

log = logging.getLogger("everruns.mcp")

MARKER_ENV = "EVERRUNS_MCP_CONNECTION"
_STDERR_LIMIT = 1 << 20  # empty the captured stderr beyond this many bytes
_CLOSE_WAIT = 15.0  # seconds for a session's owner task to wind down before it is cancelled
_MAX_PAGES = 100  # tools/list pages followed at most
_TOOL_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


# ------------------------------------------------------------------ configuration


class MCPServerConfig(BaseModel):
    """How to reach one MCP server, and how its tools behave in a run.

    Exactly one of `command` (stdio: argv of the server process) or `url`
    (streamable HTTP endpoint) is given. `env` and `cwd` apply only to `command`,
    `headers` only to `url`.
    """

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    effect: Effect = "at_most_once"
    timeout: float | None = Field(default=None, description="seconds per tool call; 30s, 5m")
    connect_timeout: float = Field(
        default=30.0, description="seconds to start the server and finish the MCP handshake"
    )
    tool_prefix: str | None = None
    include: list[str] | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("`command` must name the server executable, e.g. [npx, some-server]")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"`url` must be an http:// or https:// URL, not {value!r}")
        return value

    @field_validator("timeout", "connect_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("timeout", "connect_timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("tool_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and _TOOL_NAME_BAD.search(value):
            raise ValueError(f"`tool_prefix` may use only letters, digits, _ and -, not {value!r}")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "an MCP server needs exactly one of `command` (stdio) or `url` (streamable HTTP)"
            )
        if self.url is not None:
            for name in ("env", "cwd"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` applies only to `command` servers, not to `url`")
        if self.command is not None and self.headers is not None:
            raise ValueError("`headers` applies only to `url` servers, not to `command`")
        return self

    @property
    def label(self) -> str:
        """A short human name for messages: the URL, or the command line."""
        if self.url is not None:
            return self.url
        assert self.command is not None
        text = shlex.join(self.command)
        return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------ errors


class MCPConnectionError(ToolError):
    """The MCP server could not be started or reached (or the connection is closed)."""


class _Lost(Exception):
    """The session ended under a request. `delivered`: the server may have seen it."""

    def __init__(self, delivered: bool, detail: str):
        super().__init__(detail)
        self.delivered = delivered
        self.detail = detail


def _describe(exc: BaseException) -> str:
    """One line for an exception, flattening exception groups to their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[str] = []
        for sub in exc.exceptions:
            text = _describe(sub)
            if text not in leaves:
                leaves.append(text)
        return "; ".join(leaves)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _session_terminated(exc: MCPError) -> bool:
    """The HTTP server answered 404 for our session id: it never handled the request."""
    return exc.code == mcp_types.INVALID_REQUEST and exc.message == "Session terminated"


# ------------------------------------------------------------------ one session


class _WatchedReadStream:
    """The transport's read stream, noting when it ends (the server went away).

    The SDK's dispatcher reads this until end of stream; seeing it end here
    lets the connection know that a session is dead before sending anything.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]):
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Session:
    """One connection attempt: its owner task, its SDK client, its process."""

    def __init__(self) -> None:
        self.marker = uuid.uuid4().hex
        self.scope = anyio.CancelScope()
        self.settled = asyncio.Event()  # connected, or failed to connect
        self.client: Client | None = None
        self.task: asyncio.Task[None] | None = None
        self.ended = False  # the transport's read stream ended: the peer is gone
        self.rejected = False  # the HTTP server refused our session id
        self.finished = False  # the owner task left the SDK's context managers
        self.error: BaseException | None = None
        self.pid: int | None = None
        self.stderr: TextIO | None = None
        self.final_stderr = ""

    @property
    def usable(self) -> bool:
        return self.client is not None and not (self.ended or self.finished or self.rejected)

    def stderr_tail(self, limit: int = 2000) -> str:
        if self.stderr is None:
            return self.final_stderr[-limit:]
        try:
            fd = self.stderr.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - limit)
            return os.pread(fd, size - start, start).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def trim_stderr(self) -> None:
        """Empty the captured stderr once it is large (the server appends to it)."""
        if self.stderr is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if os.fstat(self.stderr.fileno()).st_size > _STDERR_LIMIT:
                os.ftruncate(self.stderr.fileno(), 0)

    def close_stderr(self) -> None:
        if self.stderr is not None:
            self.final_stderr = self.stderr_tail()
            self.stderr.close()
            self.stderr = None


def _find_marked_child(marker: str) -> int | None:
    """The pid of the server process: the deepest of our descendants whose
    environment carries `marker` (Linux /proc). In the sandbox the chain is
    bwrap -> bwrap (the pid namespace's init) -> server, all marked."""
    needle = f"{MARKER_ENV}={marker}".encode()
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found = None
    parent = os.getpid()
    while True:
        marked = [pid for pid in children.get(parent, []) if _has_marker(pid, needle)]
        if not marked:
            return found
        found = parent = marked[0]


def _has_marker(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def _confine(
    executable: str, args: list[str], cwd: str | None, env: dict[str, str]
) -> tuple[str, list[str]]:
    """The command line that starts the server in the tool sandbox (everruns.tools.sandbox).

    The server sees the system, the worker's Python installation and its own files
    (`sandbox.server_paths`) read-only, its `cwd` read-write, a private /tmp (also
    its HOME unless `env` sets one), and nothing else. With `sandbox: none` it runs
    unconfined, killed with its worker (PR_SET_PDEATHSIG through setpriv).
    """
    try:
        config = sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        raise MCPConnectionError(str(exc)) from None
    if config.mode == "none":
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return executable, args
        return setpriv, ["--pdeathsig", "KILL", "--", executable, *args]
    read_write = []
    if cwd is not None:
        if sandbox.exposes_hidden(cwd):
            raise MCPConnectionError(
                f"`cwd`: {cwd!r} cannot be shared with the sandboxed server (it holds the "
                "worker's folder, the home directory, the workspaces or the database)"
            )
        read_write.append(os.path.realpath(cwd))
    env.setdefault("HOME", "/tmp")
    argv = sandbox.wrap(
        [executable, *args],
        chdir=read_write[0] if read_write else "/tmp",
        read_write=read_write,
        read_only=sandbox.python_paths() + sandbox.server_paths(executable, args),
    )
    return argv[0], argv[1:]


def _resolve_executable(command: str, cwd: str | None, path: str | None) -> str:
    if cwd is not None and not os.path.isdir(cwd):
        raise MCPConnectionError(f"`cwd`: {cwd!r} is not a directory")
    if os.sep in command or (os.altsep and os.altsep in command):
        full = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        if not os.path.isfile(full):
            raise MCPConnectionError(f"`command`: {command!r} does not exist")
        if not os.access(full, os.X_OK):
            raise MCPConnectionError(f"`command`: {command!r} is not executable")
        return os.path.abspath(full)
    found = shutil.which(command, path=path)
    if found is None:
        raise MCPConnectionError(f"`command`: {command!r} was not found on PATH")
    return found


# ------------------------------------------------------------------ the connection


class MCPConnection:
    """A client connection to one MCP server that survives the server dying.

    Use as `async with MCPConnection(config) as conn:`, or call `start()` and
    `close()`; `list_tools` and `call_tool` start it on first use. Any task of
    the event loop may call any method (see the module docstring). Concurrent
    calls share one session.
    """

    def __init__(self, config: MCPServerConfig, *, name: str | None = None):
        self.config = config
        self.name = name or config.label
        self._session: _Session | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._spawned = 0

    # -------------------------------------------------------------- public

    @property
    def pid(self) -> int | None:
        """The current stdio server process id (Linux only; None for HTTP or before start)."""
        s = self._session
        return s.pid if s is not None and s.usable else None

    @property
    def reconnects(self) -> int:
        """How many sessions were started after the first one."""
        return max(0, self._spawned - 1)

    @property
    def alive(self) -> bool:
        """A session is up and its transport has not ended."""
        s = self._session
        return s is not None and s.usable

    @property
    def server_info(self) -> mcp_types.Implementation | None:
        s = self._session
        return s.client.server_info if s is not None and s.client is not None else None

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last characters the stdio server wrote to stderr (empty for HTTP)."""
        s = self._session
        return s.stderr_tail(limit) if s is not None else ""

    async def start(self) -> None:
        """Connect and finish the MCP handshake. Idempotent; raises MCPConnectionError."""
        await self._acquire()

    async def close(self) -> None:
        """End the session and stop the server process. Idempotent; any task may call it."""
        self._closed = True
        s = self._session
        self._session = None
        if s is not None:
            await self._retire(s)

    async def __aenter__(self) -> MCPConnection:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools as `{"name", "description", "input_schema"}` dicts."""
        timeout = self.config.connect_timeout
        for attempt in (1, 2):
            s, _ = await self._acquire()
            assert s.client is not None
            try:
                tools: list[dict[str, Any]] = []
                cursor: str | None = None
                async with asyncio.timeout(timeout):
                    for _ in range(_MAX_PAGES):
                        page = await s.client.list_tools(cursor=cursor, cache_mode="bypass")
                        tools.extend(
                            {
                                "name": t.name,
                                "description": t.description or "",
                                "input_schema": t.input_schema,
                            }
                            for t in page.tools
                        )
                        cursor = page.next_cursor
                        if cursor is None:
                            break
                return tools
            except TimeoutError:
                raise MCPConnectionError(
                    f"MCP server {self.name}: no tool listing within {timeout:g}s"
                ) from None
            except MCPError as exc:
                lost = (
                    exc.code == mcp_types.CONNECTION_CLOSED
                    or s.rejected
                    or _session_terminated(exc)
                )
                if not lost:
                    raise MCPConnectionError(
                        f"MCP server {self.name}: listing tools failed: {exc.message}"
                    ) from None
                detail = await self._lost_detail(s, exc.message)
                if attempt == 2 or self._closed:
                    raise MCPConnectionError(
                        f"MCP server {self.name}: connection lost while listing tools ({detail})"
                    ) from None
        raise AssertionError("unreachable")

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        timeout: float | None = None,
        *,
        retry_on_reconnect: bool = False,
        trace: dict[str, str] | None = None,
    ) -> str:
        """Call one tool and return its result as text.

        `trace`: W3C trace context of the calling span, sent in the request's `_meta`
        (the MCP convention; over stdio and HTTP alike).

        Text content is joined with newlines; other content is summarized
        (`[image: image/png, 68 bytes]`). A result flagged `isError` raises
        ToolError with the server's text. `timeout` (seconds) bounds the wait
        for the answer. See the module docstring for lost connections and
        `retry_on_reconnect`.
        """
        s, replaced = await self._acquire()
        reconnected = replaced
        while True:
            try:
                result = await self._send(s, name, arguments, timeout, trace)
            except _Lost as lost:
                detail = await self._lost_detail(s, lost.detail)
                if self._closed:
                    raise MCPConnectionError(
                        f"MCP server {self.name}: the connection was closed during {name} ({detail})"
                    ) from None
                if reconnected:
                    raise ToolError(
                        f"MCP server {self.name}: connection lost again after reconnecting, "
                        f"during {name} ({detail})"
                    ) from None
                if lost.delivered and not retry_on_reconnect:
                    raise ToolError(
                        f"MCP server {self.name}: the server connection was lost during {name} "
                        f"({detail}); the call may or may not have run and was not retried "
                        "(the next call reconnects)"
                    ) from None
                try:
                    s, _ = await self._acquire()
                except MCPConnectionError as exc:
                    raise MCPConnectionError(
                        f"MCP server {self.name}: the server connection was lost during {name} "
                        f"({detail}) and reconnecting failed: {exc}"
                    ) from None
                reconnected = True
                log.info(
                    "MCP server %s: reconnected; sending %s on the new session", self.name, name
                )
                continue
            return _render_result(name, result)

    # -------------------------------------------------------------- sessions

    async def _acquire(self) -> tuple[_Session, bool]:
        """The live session, started if needed. `bool`: a dead session was replaced."""
        async with self._lock:
            if self._closed:
                raise MCPConnectionError(f"MCP server {self.name}: the connection is closed")
            s = self._session
            replaced = False
            if s is not None and s.settled.is_set() and not s.usable:
                await self._retire(s)
                s = None
                replaced = True
            if s is None:
                s = self._spawn()
            await self._wait_ready(s)
            return s, replaced

    def _spawn(self) -> _Session:
        self._spawned += 1
        s = _Session()
        self._session = s
        s.task = asyncio.get_running_loop().create_task(self._own(s), name=f"mcp:{self.name}")
        return s

    async def _wait_ready(self, s: _Session) -> None:
        timeout = self.config.connect_timeout
        try:
            await asyncio.wait_for(s.settled.wait(), timeout)
        except TimeoutError:
            await self._retire(s)
            raise MCPConnectionError(
                f"MCP server {self.name}: not ready within {timeout:g}s (connect_timeout)"
                + _tail_note(s.stderr_tail())
            ) from None
        if not s.usable:
            error = s.error
            await self._retire(s)
            what = _describe(error) if error is not None else "the server went away"
            if self._closed:
                raise MCPConnectionError(f"MCP server {self.name}: the connection is closed")
            if isinstance(error, MCPConnectionError):
                raise MCPConnectionError(f"MCP server {self.name}: {error}") from None
            raise MCPConnectionError(
                f"MCP server {self.name}: could not connect: {what}" + _tail_note(s.stderr_tail())
            ) from None

    async def _retire(self, s: _Session) -> None:
        """Stop a session's owner task (which stops the server) and forget the session."""
        if self._session is s:
            self._session = None
        s.scope.cancel()
        task = s.task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=_CLOSE_WAIT)
            if not done:
                log.warning("MCP server %s: session did not wind down; cancelling it", self.name)
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)
        s.close_stderr()

    async def _lost_detail(self, s: _Session, detail: str) -> str:
        """Retire a session that died under a request; describe why it died."""
        async with self._lock:
            await self._retire(s)
        if s.error is not None:
            detail = _describe(s.error)
        elif s.pid is not None:
            detail = f"{detail}; server process {s.pid} ended"
        return detail + _tail_note(s.stderr_tail(500))

    async def _own(self, s: _Session) -> None:
        """The owner task: enters the SDK context managers, waits, exits them."""
        try:
            with s.scope:
                client = Client(
                    self._transport(s),
                    client_info=mcp_types.Implementation(name="everruns", version=__version__),
                    cache=None,
                )
                async with client:
                    s.client = client
                    if self.config.command is not None:
                        s.pid = _find_marked_child(s.marker)
                    log.info(
                        "MCP server %s: connected (protocol %s%s)",
                        self.name,
                        client.protocol_version,
                        f", pid {s.pid}" if s.pid else "",
                    )
                    s.settled.set()
                    await anyio.sleep_forever()
        except BaseException as exc:
            s.error = exc
            if not isinstance(exc, Exception):
                raise
            if s.client is not None:
                log.warning("MCP server %s: session ended: %s", self.name, _describe(exc))
        finally:
            s.finished = True
            s.settled.set()

    @asynccontextmanager
    async def _transport(self, s: _Session) -> AsyncIterator[Any]:
        def on_end() -> None:
            s.ended = True

        config = self.config
        if config.command is not None:
            env = {MARKER_ENV: s.marker, **(config.env or {})}
            path = (config.env or {}).get("PATH", os.environ.get("PATH"))
            executable = _resolve_executable(config.command[0], config.cwd, path)
            command, args = await asyncio.to_thread(
                _confine, executable, config.command[1:], config.cwd, env
            )
            s.stderr = _stderr_capture()
            params = StdioServerParameters(command=command, args=args, env=env, cwd=config.cwd)
            async with stdio_client(params, errlog=s.stderr) as (read, write):
                yield _WatchedReadStream(read, on_end), write
        else:
            assert config.url is not None

            async def on_response(response: httpx2.Response) -> None:
                request = response.request
                if (
                    request.method == "POST"
                    and response.status_code in (400, 404)
                    and "mcp-session-id" in request.headers
                ):
                    # The server rejected our session id at the HTTP level (404 per the
                    # spec; 400 from servers built on the TypeScript SDK's example):
                    # it restarted or expired the session and did not run the request.
                    s.rejected = True

            http = httpx2.AsyncClient(
                headers=config.headers,
                timeout=httpx2.Timeout(30.0, read=300.0),
                event_hooks={"response": [on_response]},
            )
            async with http, streamable_http_client(config.url, http_client=http) as (read, write):
                yield _WatchedReadStream(read, on_end), write

    async def _send(
        self,
        s: _Session,
        name: str,
        arguments: dict[str, Any],
        timeout: float | None,
        trace: dict[str, str] | None = None,
    ) -> mcp_types.CallToolResult:
        client = s.client
        if client is None or not s.usable:
            raise _Lost(delivered=False, detail="the session had already ended")
        s.trim_stderr()
        try:
            meta = cast(mcp_types.RequestParamsMeta, dict(trace)) if trace else None
            return await client.call_tool(name, arguments, read_timeout_seconds=timeout, meta=meta)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                raise _Lost(delivered=True, detail=exc.message) from None
            if s.rejected or _session_terminated(exc):
                raise _Lost(
                    delivered=False, detail="the server no longer knows the session"
                ) from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolError(
                    f"MCP server {self.name}: {name} did not answer within {timeout:g}s"
                    if timeout is not None
                    else f"MCP server {self.name}: {name} timed out"
                ) from None
            raise ToolError(f"MCP server {self.name}: {name} failed: {exc.message}") from None
        except Exception as exc:
            if s.ended or s.finished:
                raise _Lost(delivered=True, detail=_describe(exc)) from None
            raise ToolError(f"MCP server {self.name}: {name} failed: {_describe(exc)}") from None


def _stderr_capture() -> TextIO:
    """An anonymous file for a server's stderr, in append mode so that the
    server's writes land at the end even after we truncate it."""
    fd, path = tempfile.mkstemp(prefix="everruns-mcp-", suffix=".stderr")
    os.close(fd)
    try:
        return open(path, "a+", encoding="utf-8", errors="replace")
    finally:
        os.unlink(path)


def _tail_note(tail: str) -> str:
    tail = tail.strip()
    return f"; server stderr: ...{tail[-1000:]}" if tail else ""


# ------------------------------------------------------------------ results


def _approx_bytes(b64: str) -> int:
    return len(b64) * 3 // 4 - b64[-2:].count("=")


def _render_block(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        kind = "image" if isinstance(block, mcp_types.ImageContent) else "audio"
        return f"[{kind}: {block.mime_type}, {_approx_bytes(block.data)} bytes]"
    if isinstance(block, mcp_types.ResourceLink):
        desc = f" - {block.description}" if block.description else ""
        return f"[resource link: {block.name} <{block.uri}>{desc}]"
    if isinstance(block, mcp_types.EmbeddedResource):
        res = block.resource
        if isinstance(res, mcp_types.TextResourceContents):
            return f"[resource <{res.uri}>]\n{res.text}"
        mime = f"{res.mime_type}, " if res.mime_type else ""
        return f"[resource <{res.uri}>: {mime}{_approx_bytes(res.blob)} bytes]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"


def _render_result(name: str, result: mcp_types.CallToolResult) -> str:
    text = "\n".join(_render_block(block) for block in result.content)
    if not result.content and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
    if result.is_error:
        raise ToolError(text or f"{name} reported an error without a message")
    return text


# ------------------------------------------------------------------ tools


def _argument_errors(validator: Any, arguments: Any) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(arguments)"
        problems.append(f"{where}: {error.message}")
    return problems


def _validator(tool_name: str, schema: dict[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        log.warning(
            "MCP tool %s has an invalid input schema (%s); arguments go unchecked",
            tool_name,
            exc.message,
        )
        return None
    return cls(schema)


async def _resolve(factory: Callable[[], Any]) -> MCPConnection:
    conn = factory()
    if inspect.isawaitable(conn):
        conn = await conn
    if not isinstance(conn, MCPConnection):
        raise TypeError(f"connection_factory returned {type(conn).__name__}, not MCPConnection")
    return conn


def tools_from_listing(
    config: MCPServerConfig,
    listing: list[dict[str, Any]],
    connection_factory: Callable[[], MCPConnection | Awaitable[MCPConnection]],
) -> list[Tool]:
    """Tools for an MCP server's listing (as returned by `MCPConnection.list_tools`).

    Each tool is named `tool_prefix + server name`, with characters that model
    APIs reject replaced by `_` (at most 64 long); it calls the server under its
    original name. `include` keeps only the listed server tool names (a name
    the server lacks is a ValueError). Each tool takes `config.effect` and
    `config.timeout`; pure and idempotent tools are resent after a reconnect,
    at_most_once tools are not. `invoke` validates the arguments against the
    tool's input schema (ToolError naming each problem), then calls
    `connection_factory()` (plain or async) for the connection to use.
    """
    by_name = {entry["name"]: entry for entry in listing}
    if config.include is not None:
        missing = [n for n in config.include if n not in by_name]
        if missing:
            raise ValueError(
                f"`include` names tools the MCP server {config.label} does not have: "
                f"{', '.join(missing)} (it has: {', '.join(sorted(by_name)) or 'none'})"
            )
        selected = [by_name[n] for n in config.include]
    else:
        selected = list(listing)
    retry = config.effect != "at_most_once"
    tools: list[Tool] = []
    seen: dict[str, str] = {}
    for entry in selected:
        server_name: str = entry["name"]
        name = _TOOL_NAME_BAD.sub("_", (config.tool_prefix or "") + server_name)[:64]
        if name in seen:
            raise ValueError(
                f"MCP tools {seen[name]!r} and {server_name!r} both become tool {name!r}"
            )
        seen[name] = server_name
        schema = entry.get("input_schema") or {"type": "object", "properties": {}}
        tools.append(
            Tool(
                name=name,
                description=entry.get("description") or f"{server_name} (MCP: {config.label})",
                parameters=schema,
                effect=config.effect,
                invoke=_make_invoke(config, server_name, schema, connection_factory, retry),
                timeout=config.timeout,
            )
        )
    return tools


def _make_invoke(
    config: MCPServerConfig,
    server_name: str,
    schema: dict[str, Any],
    connection_factory: Callable[[], Any],
    retry: bool,
) -> Callable[[dict[str, Any], ToolContext], Awaitable[str]]:
    validator = _validator(server_name, schema)

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> str:
        if validator is not None:
            try:
                problems = _argument_errors(validator, arguments)
            except Exception as exc:  # e.g. an unresolvable $ref: leave checking to the server
                log.debug("cannot validate arguments of %s: %s", server_name, exc)
                problems = []
            if problems:
                raise ToolError(f"invalid arguments for {server_name}: {'; '.join(problems[:5])}")
        conn = await _resolve(connection_factory)
        return await conn.call_tool(
            server_name, arguments, config.timeout, retry_on_reconnect=retry, trace=ctx.trace
        )

    return invoke


__all__ = [
    "MCPConnection",
    "MCPConnectionError",
    "MCPServerConfig",
    "tools_from_listing",
]
