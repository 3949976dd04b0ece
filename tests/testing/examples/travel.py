"""The worked example of docs/testing.md: a travel agent that searches and pays.

`search_flights` is idempotent (it reads); `pay` is at_most_once (money moves, and
the fake payment API below has no idempotency keys). The python model searches,
pays for the cheapest flight, and reports; when the payment's outcome is unknown
(a crash interrupted it) it says so instead of paying again.
"""

from __future__ import annotations

import os

from everruns import tool
from everruns.testing import ModelRequest, ToolCall, record_effect

FLIGHTS = {"LIS": [("TP123", 180), ("FR456", 95)], "OSL": [("SK789", 240)]}


@tool(effect="idempotent")
def search_flights(destination: str) -> str:
    """Flights to a destination, cheapest first, as `code:price` pairs."""
    found = sorted(FLIGHTS.get(destination, []), key=lambda f: f[1])
    return ", ".join(f"{code}:{price}" for code, price in found) or "none"


@tool(effect="at_most_once")
def pay(flight: str, amount: int) -> str:
    """Pay for a flight (the payment API has no idempotency key: never retried)."""
    ledger = os.environ.get("TRAVEL_PAYMENTS")
    if ledger:
        with open(ledger, "a", encoding="utf-8") as fh:
            fh.write(f"{flight} {amount}\n")
    record_effect(f"pay {amount} EUR for {flight}")
    return f"paid {amount} EUR for {flight}"


def respond(request: ModelRequest) -> str | list[ToolCall]:
    """Search, pay for the cheapest flight, then report what happened."""
    last = request.last_tool_result
    if last is None:
        destination = (request.last_user_message or "").split()[-1]
        return [ToolCall("search_flights", {"destination": destination})]
    if request.messages[-1]["name"] == "search_flights":
        if last == "none":
            return "no flights found"
        code, price = last.split(", ")[0].split(":")
        return [ToolCall("pay", {"flight": code, "amount": int(price)})]
    if request.messages[-1]["is_error"]:
        return "the payment's outcome is unknown; check with the bank before paying again"
    return f"booked: {last}"
