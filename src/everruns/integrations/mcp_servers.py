"""MCP servers of a framework agent, connected for the runs that use them.

An agent a worker imports by reference holds MCP server objects nobody connected (the
user's `async with server:` is not there). `connected(servers)` connects each one that
is not connected yet and closes it when the last run of this process using it ends.
Connect and cleanup happen on one owner task per server, as the MCP clients require
(their task groups must be exited by the task that entered them), so concurrent runs of
one agent in one worker share the connection. A server the caller connected itself is
used as it is and left open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any


class _Owner:
    def __init__(self, server: Any):
        self.server = server
        self.users = 0
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._hold())

    async def _hold(self) -> None:
        try:
            await self.server.connect()
        except Exception as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            await self.stop.wait()
        finally:
            await self.server.cleanup()


_owners: dict[int, _Owner] = {}


def _connected_elsewhere(server: Any) -> bool:
    return id(server) not in _owners and getattr(server, "session", None) is not None


@contextlib.asynccontextmanager
async def connected(servers: Sequence[Any]) -> AsyncIterator[None]:
    """Hold the servers connected for the body (see the module docstring)."""
    held: list[_Owner] = []
    try:
        for server in dict.fromkeys(servers):  # each once, in order
            if _connected_elsewhere(server):
                continue
            owner = _owners.get(id(server))
            if owner is None:
                owner = _owners[id(server)] = _Owner(server)
            owner.users += 1
            held.append(owner)
            await owner.ready.wait()
            if owner.error is not None:
                name = getattr(server, "name", type(server).__name__)
                raise RuntimeError(f"MCP server {name!r}: cannot connect: {owner.error}")
        yield
    finally:
        for owner in held:
            owner.users -= 1
            if owner.users == 0:
                _owners.pop(id(owner.server), None)
                owner.stop.set()
                await asyncio.gather(owner.task, return_exceptions=True)
