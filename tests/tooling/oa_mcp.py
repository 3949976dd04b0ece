"""A stdio MCP server (mcp 2.x) for tests/integrations/test_openai_agents.py: `lookup` (read
only) and `reserve` (a booking: each call appends one line to the file named by
OA_MCP_LEDGER, so a test sees how often the server really acted)."""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("concierge")


@server.tool()
def lookup(city: str) -> str:
    """The best restaurant of a city."""
    return f"Trattoria {city}"


@server.tool()
def reserve(restaurant: str, guests: int) -> str:
    """Reserve a table (at_most_once: the restaurant holds a deposit)."""
    with open(os.environ["OA_MCP_LEDGER"], "a", encoding="utf-8") as fh:
        fh.write(
            json.dumps({"restaurant": restaurant, "guests": guests, "pid": os.getpid()}) + "\n"
        )
        fh.flush()
        os.fsync(fh.fileno())
    return f"table for {guests} at {restaurant}"


if __name__ == "__main__":
    server.run("stdio")
