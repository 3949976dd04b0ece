"""Built-in tools: workspace, shell, web_fetch, http, sleep, notes.

Each is an ordinary `Tool`; the engine gives them the run's workspace directory
and notes through `ToolContext`, journals workspace changes with the call's
result, and turns a `SleepRequest` into a durable wait.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from everruns.spec import ToolSpec
from everruns.tools.base import (
    SleepRequest,
    SpawnRequest,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    WaitRequest,
)
from everruns.tools.python import from_function
from everruns.tools.workspace import confine, replace_file

BUILTINS = ("workspace", "shell", "web_fetch", "http", "sleep", "notes", "subagents", "memory")


def _root(ctx: ToolContext) -> Path:
    if ctx.workspace is None:
        raise ToolError("this run has no workspace")
    return ctx.workspace


# ------------------------------------------------------------ workspace


def _os_error(path: str, exc: OSError) -> ToolError:
    """An OSError as a message naming the workspace-relative path, never the host's."""
    return ToolError(f"{path!r}: {exc.strerror or type(exc).__name__}")


def read_file(path: str, ctx: ToolContext, start_line: int = 1, end_line: int | None = None) -> str:
    """Read a text file from the workspace, optionally a range of lines (1-based, inclusive).

    Args:
        path: file path relative to the workspace
        start_line: first line to return
        end_line: last line to return (default: the end)
    """
    target = confine(_root(ctx), path)
    if not target.is_file():
        raise ToolError(f"{path!r} does not exist in the workspace")
    try:
        lines = target.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise _os_error(path, exc) from None
    chosen = lines[max(0, start_line - 1) : end_line]
    return "\n".join(chosen)


def write_file(path: str, content: str, ctx: ToolContext) -> str:
    """Create or overwrite a text file in the workspace.

    Args:
        path: file path relative to the workspace (folders are created)
        content: the whole new content
    """
    replace_file(path, confine(_root(ctx), path), content.encode())
    return f"wrote {len(content)} characters to {path}"


def edit_file(path: str, old: str, new: str, ctx: ToolContext, count: int = 1) -> str:
    """Replace text in a workspace file.

    Args:
        path: file path relative to the workspace
        old: the exact text to replace
        new: the replacement
        count: how many occurrences must be replaced (0 = all)
    """
    target = confine(_root(ctx), path)
    if not target.is_file():
        raise ToolError(f"{path!r} does not exist in the workspace")
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ToolError(f"{path!r}: {reason}") from None
    found = text.count(old)
    if not old or found == 0:
        raise ToolError(f"the text to replace was not found in {path}")
    if count and found < count:
        raise ToolError(f"expected {count} occurrence(s) in {path}, found {found}")
    replace_file(path, target, text.replace(old, new, count or -1).encode())
    return f"replaced {count or found} occurrence(s) in {path}"


def list_files(ctx: ToolContext, path: str = ".") -> list[str]:
    """List the files under a workspace folder (recursively), with sizes.

    Args:
        path: folder relative to the workspace
    """
    root = _root(ctx).resolve()
    base = confine(root, path)
    if not base.exists():
        raise ToolError(f"{path!r} does not exist in the workspace")
    out = []
    for item in sorted(base.rglob("*")):
        if item.is_file() and not item.is_symlink():
            out.append(f"{item.relative_to(root).as_posix()} ({item.stat().st_size} bytes)")
    return out


def search_files(pattern: str, ctx: ToolContext, regex: bool = False, path: str = ".") -> list[str]:
    """Search workspace files for text; returns `path:line: text` matches (at most 200).

    Args:
        pattern: text (or a regular expression when regex is true)
        regex: treat the pattern as a Python regular expression
        path: folder to search, relative to the workspace
    """
    root = _root(ctx).resolve()
    base = confine(root, path)
    try:
        matcher = re.compile(pattern if regex else re.escape(pattern))
    except re.error as exc:
        raise ToolError(f"invalid regular expression: {exc}") from None
    hits: list[str] = []
    for item in sorted(base.rglob("*")):
        if not item.is_file() or item.is_symlink():
            continue
        try:
            lines = item.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(lines, 1):
            if matcher.search(line):
                hits.append(f"{item.relative_to(root).as_posix()}:{number}: {line[:300]}")
                if len(hits) >= 200:
                    return hits
    return hits


# ------------------------------------------------------------ notes and sleep


def note(text: str) -> ToolOutput:
    """Append a progress note; notes are kept for the whole run, so you can re-orient yourself later.

    Args:
        text: the note
    """
    return ToolOutput(output="noted", note=text)


def read_notes(ctx: ToolContext) -> str:
    """Read all progress notes of this run, oldest first."""
    if not ctx.notes:
        return "(no notes yet)"
    return "\n".join(f"{i}. {n}" for i, n in enumerate(ctx.notes, 1))


def sleep(seconds: float, reason: str = "") -> SleepRequest:
    """Wait durably, e.g. "check again in 6 hours": the run releases its worker and resumes after.

    Args:
        seconds: how long to wait
        reason: why (shown to people watching the run)
    """
    if seconds < 0:
        raise ToolError("seconds must not be negative")
    return SleepRequest(until=time.time() + seconds, reason=reason or "sleep")


# ------------------------------------------------------------ sub-agents


def spawn_agent(
    input: str, agent: str | None = None, spec: dict[str, Any] | None = None
) -> SpawnRequest:
    """Start a sub-agent: a durable child run of its own; returns its run id at once.

    Args:
        input: the task for the sub-agent
        agent: name of a stored agent to run (default: this agent)
        spec: or an inline agent spec
    """
    return SpawnRequest(input=input, agent=agent, spec=spec)


def wait_agents(run_ids: list[str] | None = None, mode: str = "all") -> WaitRequest:
    """Wait for sub-agents to finish and get their results; this run sleeps meanwhile.

    Args:
        run_ids: the run ids returned by spawn_agent (default: every sub-agent of this run)
        mode: "all" to wait for every one, "any" for the first to finish
    """
    if mode not in ("all", "any"):
        raise ToolError('mode must be "all" or "any"')
    return WaitRequest(run_ids=tuple(run_ids or ()), mode=mode)


# ------------------------------------------------------------ shell, web


def _shell_tool(options: dict[str, Any]) -> Callable[..., Any]:
    default_timeout = float(options.get("timeout", 120))
    max_output = int(options.get("max_output", 100_000))

    async def shell(command: str, ctx: ToolContext, timeout: float | None = None) -> dict[str, Any]:
        """Run a shell command (/bin/sh -c) in the workspace; returns exit code, stdout, stderr.

        Args:
            command: the command line
            timeout: seconds before the command is killed
        """
        from everruns.tools.reaper import registry_for
        from everruns.tools.shell import run_shell

        root = _root(ctx)
        return await run_shell(
            command,
            cwd=root,
            timeout=min(timeout or default_timeout, default_timeout),
            max_output=max_output,
            registry=registry_for(root),
            info={"call_id": ctx.tool_call_id, "worker_pid": os.getpid()},
        )

    return shell


def _private_allowed(requested: Any, operator_allows: bool) -> bool:
    """A spec can narrow the operator's SSRF guard (`allow_private: false`), never widen it."""
    if requested is None:
        return operator_allows
    if not isinstance(requested, bool):
        raise ValueError("options.allow_private must be true or false")
    if requested and not operator_allows:
        raise ValueError(
            "options.allow_private: the operator does not allow private networks "
            "(settings `allow_private_networks: false`); a spec can only narrow the SSRF guard"
        )
    return requested


def _web_tools(
    options: dict[str, Any], allow_private: bool, retry_5xx: bool = False
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    allow = _private_allowed(options.get("allow_private"), allow_private)
    timeout = float(options.get("timeout", 30))
    max_bytes = int(options.get("max_bytes", 2_000_000))

    async def web_fetch(url: str, ctx: ToolContext) -> dict[str, Any]:
        """Fetch a web page and return its readable text (title and text).

        Args:
            url: an http or https URL
        """
        from everruns.tools.web import fetch_text

        return await fetch_text(
            url, allow_private=allow, timeout=timeout, max_bytes=max_bytes, trace=ctx.trace
        )

    async def http(
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        body: str | None = None,
        *,
        ctx: ToolContext,
    ) -> dict[str, Any]:
        """Make an HTTP request to an API and return status, headers and body.

        Args:
            method: GET, POST, PUT, PATCH, DELETE, ...
            url: an http or https URL
            headers: request headers
            json_body: a JSON body
            body: a raw text body
        """
        from everruns.tools.web import http_request

        trace = ctx.trace
        return await http_request(
            method,
            url,
            headers={**trace, **(headers or {})} if trace else headers,
            json_body=json_body,
            body=body,
            allow_private=allow,
            timeout=timeout,
            max_bytes=max_bytes,
            retry_5xx=retry_5xx,
        )

    return web_fetch, http


def build_builtin(entry: ToolSpec, *, allow_private_networks: bool = False) -> list[Tool]:
    """The tools of one `builtin:` entry of a spec."""
    name = entry.builtin or ""
    options = entry.options
    fns: list[tuple[Callable[..., Any], str]]
    if name == "workspace":
        fns = [
            (read_file, "pure"),
            (write_file, "idempotent"),
            (edit_file, "idempotent"),
            (list_files, "pure"),
            (search_files, "pure"),
        ]
    elif name == "shell":
        fns = [(_shell_tool(options), "at_most_once")]
    elif name in ("web_fetch", "http"):
        # A 5xx is retried only where a repeat is safe: an entry that declares http
        # idempotent (or pure); 429 and 503 always are (nothing was done).
        repeatable = entry.effect in ("pure", "idempotent")
        fetch, http = _web_tools(options, allow_private_networks, retry_5xx=repeatable)
        fns = [(fetch, "idempotent")] if name == "web_fetch" else [(http, "at_most_once")]
    elif name == "sleep":
        fns = [(sleep, "idempotent")]
    elif name == "notes":
        fns = [(note, "idempotent"), (read_notes, "pure")]
    elif name == "subagents":
        fns = [(spawn_agent, "idempotent"), (wait_agents, "idempotent")]
    elif name == "memory":
        from everruns.tools.memory import recall, remember

        fns = [(remember, "idempotent"), (recall, "pure")]
    else:
        raise ValueError(f"unknown built-in tool {name!r} (available: {', '.join(BUILTINS)})")
    tools = []
    for fn, effect in fns:
        tool = from_function(fn, effect=entry.effect or effect, timeout=entry.timeout)
        uses_workspace = name in ("workspace", "shell")
        tools.append(
            Tool(
                name=tool.name,
                description=tool.description,
                parameters=tool.parameters,
                effect=tool.effect,
                invoke=tool.invoke,
                timeout=tool.timeout,
                max_output=int(options.get("max_output_chars", 20_000)),
                uses_workspace=uses_workspace,
            )
        )
    return tools
