"""Build the tools of an agent spec."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from everruns.errors import EverrunsError
from everruns.spec import AgentSpec, ToolRetry, ToolSpec
from everruns.tools.base import Tool
from everruns.tools.builtins import build_builtin
from everruns.tools.python import ToolLoadError, from_function, load_function

if TYPE_CHECKING:  # the mcp SDK is heavy to import: only runs that use MCP load it
    from everruns.tools.mcp import MCPConnection, MCPServerConfig


class ToolSpecError(EverrunsError):
    """A tool entry of the spec cannot be loaded; `field` is its path in the spec."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def build_tools(spec: AgentSpec, *, allow_private_networks: bool = False) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for index, entry in enumerate(spec.tools):
        field = f"tools[{index}]"
        if entry.python is not None:
            try:
                fn = load_function(entry.python, spec.python_path)
            except ToolLoadError as exc:
                raise ToolSpecError(f"{field}.python", str(exc)) from None
            loaded = [from_function(fn, effect=entry.effect, timeout=entry.timeout)]
        elif entry.builtin is not None:
            try:
                loaded = build_builtin(entry, allow_private_networks=allow_private_networks)
            except ValueError as exc:
                raise ToolSpecError(f"{field}.builtin", str(exc)) from None
        else:
            mcp_config(entry, field)  # validated here; listed asynchronously by the runner
            continue
        for tool in with_policies(loaded, entry):
            if tool.name in tools:
                raise ToolSpecError(field, f"duplicate tool name {tool.name!r}")
            tools[tool.name] = tool
    return tools


def with_policies(loaded: list[Tool], entry: ToolSpec) -> list[Tool]:
    """The entry's `retry:` and `rate_limit:` on each of its tools (the http built-in
    retries by default: a 429 or a 503 says nothing was done)."""
    retry = entry.retry
    if retry is None and entry.builtin == "http":
        retry = ToolRetry()
    return [dataclasses.replace(t, retry=retry, rate_limit=entry.rate_limit) for t in loaded]


def mcp_config(entry: ToolSpec, field: str) -> MCPServerConfig:
    """The MCP server config of a spec entry; `effect`/`timeout` on the entry apply."""
    from everruns.tools.mcp import MCPServerConfig

    data: dict[str, Any] = dict(entry.mcp or {})
    if entry.effect is not None:
        data["effect"] = entry.effect
    if entry.timeout is not None:
        data["timeout"] = entry.timeout
    try:
        return MCPServerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ToolSpecError(f"{field}.mcp" + (f".{where}" if where else ""), message) from None


class MCPPool:
    """One connection per MCP server configuration per worker process, shared by runs;
    a server that died is restarted transparently by the connection."""

    def __init__(self) -> None:
        self._connections: dict[str, MCPConnection] = {}
        self._lock = asyncio.Lock()

    async def get(self, config: MCPServerConfig) -> MCPConnection:
        key = json.dumps(config.model_dump(mode="json"), sort_keys=True)
        async with self._lock:
            connection = self._connections.get(key)
            if connection is None:
                from everruns.tools.mcp import MCPConnection

                connection = MCPConnection(config)
                self._connections[key] = connection
        return connection

    async def close(self) -> None:
        for connection in list(self._connections.values()):
            try:
                await connection.close()
            except Exception:  # closing is best effort at shutdown
                pass
        self._connections.clear()
