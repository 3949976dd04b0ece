"""Example user code for the plugin's tests: a fake payment API and three charge tools.

The fake bank keeps its charges in a JSON-lines file (SHOP_BANK), so it survives
the worker processes the crash matrix kills. It charges once per idempotency key
when given one, and says so with `record_effect` whenever money really moves.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid

from everruns import ToolContext, tool
from everruns.testing import ModelRequest, ToolCall, record_effect


def bank_charge(card: str, amount: int, key: str | None) -> str:
    """Charge a card; a key seen before returns the earlier receipt and moves no money."""
    path = os.environ["SHOP_BANK"]
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        charges = [json.loads(line) for line in fh if line.strip()]
        if key is not None:
            for charge in charges:
                if charge["key"] == key:
                    return charge["receipt"]
        receipt = f"charged {amount} EUR to {card}"
        fh.write(
            json.dumps({"card": card, "amount": amount, "key": key, "receipt": receipt}) + "\n"
        )
        fh.flush()
        os.fsync(fh.fileno())
    record_effect(f"charge {amount} EUR to {card}", key=key)
    return receipt


@tool(effect="idempotent")
def charge_naive(card: str, amount: int) -> str:
    """Charge a card (declared idempotent, but charges again on every attempt)."""
    return bank_charge(card, amount, None)


@tool(effect="idempotent")
def charge_random_key(card: str, amount: int, ctx: ToolContext) -> str:
    """Charge a card (declared idempotent, but makes up its own key each attempt)."""
    return bank_charge(card, amount, uuid.uuid4().hex)


@tool(effect="idempotent")
def charge_keyed(card: str, amount: int, ctx: ToolContext) -> str:
    """Charge a card with the call's idempotency key: a repeat moves no money."""
    return bank_charge(card, amount, ctx.idempotency_key)


def respond(request: ModelRequest) -> str | list[ToolCall]:
    """A python model: charge 10 EUR with the agent's one tool, then report the receipt."""
    if request.last_tool_result is None:
        return [ToolCall(request.tools[0]["name"], {"card": "card-1", "amount": 10})]
    return f"paid, receipt {request.last_tool_result}"
