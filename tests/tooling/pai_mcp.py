"""A stdio MCP server (mcp 2.x `MCPServer`) for the Pydantic AI agents of
tests/tooling/pai_agents.py: `find_table` only reads, `reserve_table` acts, and appends
one `mcp` line to the crash matrix's ledger (EVERRUNS_TESTING_LEDGER, fsync'ed) each time
it really reserves, so a test can count the reservations a run made."""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("reservations")


@server.tool()
def find_table(city: str) -> str:
    """A restaurant with a free table in a city."""
    return f"Tasca do Chico, {city}"


@server.tool()
def reserve_table(restaurant: str, people: int) -> str:
    """Reserve a table (it acts: at_most_once)."""
    ledger = os.environ.get("EVERRUNS_TESTING_LEDGER")
    if ledger:
        with open(ledger, "a", encoding="utf-8") as fh:
            entry = {"kind": "mcp", "tool": "reserve_table", "pid": os.getpid()}
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return f"table for {people} reserved at {restaurant}"


if __name__ == "__main__":
    server.run("stdio")
