"""MCP tool listing: each server's tools are listed once per run and journaled.

A resumed run (on any worker) builds its MCP tools from the journaled list, so the
model sees the same tools before and after a crash even if the server changed.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import TYPE_CHECKING, Any

from everruns.core.events import EventType
from everruns.engine.runlog import RunLog
from everruns.spec import AgentSpec
from everruns.tools.base import Tool, ToolError
from everruns.tools.registry import MCPPool, ToolSpecError, mcp_config, with_policies

if TYPE_CHECKING:
    from everruns.tools.mcp import MCPServerConfig


async def load_mcp_tools(
    log: RunLog, pool: MCPPool, spec: AgentSpec, tools: dict[str, Tool]
) -> bool:
    """Add the MCP servers' tools of `spec` to `tools`, listing (and journaling) each
    server not listed yet; False if the run failed."""
    for index, entry in enumerate(spec.tools):
        if entry.mcp is None:
            continue
        try:
            config = mcp_config(entry, f"tools[{index}]")
        except ToolSpecError as exc:
            await log.fail("invalid_spec", str(exc))
            return False
        connection = await pool.get(config)
        server = listing_key(config)
        listing = log.state.tool_listings.get(server)
        if listing is None:
            try:
                listing = await connection.list_tools()
            except ToolError as exc:
                await log.fail("mcp_unavailable", f"MCP server {config.label}: {exc}")
                return False
            await log.append(EventType.TOOLS_LISTED, {"server": server, "tools": listing})
        from everruns.tools.mcp import tools_from_listing

        try:
            found = tools_from_listing(config, listing, _constant(connection))
        except ValueError as exc:
            await log.fail("invalid_spec", f"tools[{index}].mcp: {exc}")
            return False
        for tool in with_policies(found, entry):
            if tool.name in tools:
                await log.fail("invalid_spec", f"duplicate tool name {tool.name!r}")
                return False
            tools[tool.name] = tool
    return True


def listing_key(config: MCPServerConfig) -> str:
    """Which server a journaled tool list belongs to. Not `config.label`: that shortens
    long command lines, so two servers could share it. The full URL or command line,
    plus a digest of `cwd`/`env`/`headers` when set (they can select another server or
    other tools; the digest keeps secrets out of the journal)."""
    key = config.url if config.url is not None else shlex.join(config.command or [])
    extra = {"cwd": config.cwd, "env": config.env, "headers": config.headers}
    extra = {name: value for name, value in extra.items() if value}
    if extra:
        digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()
        key += f" [{digest[:12]}]"
    return key


def _constant(value: Any) -> Any:
    def get() -> Any:
        return value

    return get
