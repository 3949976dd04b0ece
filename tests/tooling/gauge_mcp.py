"""A streamable-HTTP MCP server that measures how many calls of its one tool run at once
(tests/tools/test_mcp_rate_limit.py: a `rate_limit:` on an MCP tool entry is fleet-wide).

    python gauge_mcp.py PORT LEDGER

`gauge(label, hold)` counts itself in, sleeps `hold` seconds, counts itself out, and
appends {label, start, end, in_flight} to LEDGER (one JSON line per call; `in_flight` is
how many calls were running when this one arrived, itself included). Every worker of
the test connects to this one process, so it sees the whole fleet's calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("gauge", log_level="WARNING")
_state = {"in_flight": 0}


@server.tool()
async def gauge(label: str, hold: float = 0.3) -> str:
    """Hold the call for `hold` seconds and record how many calls ran at once."""
    _state["in_flight"] += 1
    start = time.time()
    seen = _state["in_flight"]
    try:
        await asyncio.sleep(hold)
    finally:
        _state["in_flight"] -= 1
    _record({"label": label, "start": start, "end": time.time(), "in_flight": seen})
    return f"gauged {label}"


def _record(entry: dict[str, object]) -> None:
    with open(sys.argv[2], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    server.run("streamable-http", port=int(sys.argv[1]))
