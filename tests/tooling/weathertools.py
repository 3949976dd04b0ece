"""A tool for the real-model tests: deterministic weather, every call recorded in memory."""

from __future__ import annotations

from everruns import tool

CALLS: list[str] = []


@tool(effect="pure")
def get_weather(city: str = "") -> str:
    """Current weather for a city."""
    CALLS.append(city)
    return f"The weather in {city or 'that city'} is sunny, 21 C."
