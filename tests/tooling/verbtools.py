"""A slow at_most_once tool for the steer/interrupt tests: it records when it starts and
when it finishes (EVERRUNS_TEST_LEDGER), so a test sees whether it ran and was cut."""

from __future__ import annotations

import asyncio
import json
import os

from everruns import ToolContext, tool


def _note(event: str, key: str) -> None:
    path = os.environ.get("EVERRUNS_TEST_LEDGER")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": event, "key": key}) + "\n")


@tool(effect="at_most_once")
async def slow_charge(key: str, ctx: ToolContext, seconds: float = 30.0) -> str:
    """Charge a card (slowly)."""
    _note("started", key)
    await asyncio.sleep(seconds)
    _note("finished", key)
    return f"charged {key}"
