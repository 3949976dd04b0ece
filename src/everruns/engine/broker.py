"""In-process fan-out of run events to live subscribers.

Durable events are published after they are committed; ephemeral events
(token deltas) are published only here and never journaled.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any


class Broker:
    def __init__(self, queue_size: int = 10_000):
        self._subscribers: dict[str | None, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._queue_size = queue_size

    def subscribe(self, run_id: str | None = None) -> asyncio.Queue[dict[str, Any]]:
        """A queue of events for one run, or for all runs when run_id is None."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers[run_id].add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]], run_id: str | None = None) -> None:
        self._subscribers[run_id].discard(queue)

    def publish(self, run_id: str, event: dict[str, Any]) -> None:
        for key in (run_id, None):
            for queue in self._subscribers.get(key, ()):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    pass  # a slow live subscriber misses live events; it can re-read the journal
