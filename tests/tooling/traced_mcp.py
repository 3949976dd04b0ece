"""A stdio MCP server whose one tool answers the `traceparent` of the request's `_meta`
(tests/tools/test_mcp.py: everruns propagates the tool call's trace context to MCP)."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("traced")


@server.tool()
def show_meta(ctx: Context) -> str:
    """The traceparent this call carried in params._meta (empty when none)."""
    meta = ctx.request_context.meta or {}
    value = meta.get("traceparent") if isinstance(meta, dict) else getattr(meta, "traceparent", "")
    return str(value or "")


if __name__ == "__main__":
    server.run("stdio")
