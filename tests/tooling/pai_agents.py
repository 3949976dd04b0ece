"""Pydantic AI agents for tests/integrations: pydantic-ai's own OpenAI chat model, sent to
the loopback fake server named by PAI_OPENAI_URL (tests/helpers.FakeOpenAI)."""

from __future__ import annotations

import os

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from everruns.integrations import everruns_tool
from everruns.testing.effects import record_effect


def model() -> OpenAIChatModel:
    url = os.environ.get("PAI_OPENAI_URL", "http://127.0.0.1:9/v1")
    return OpenAIChatModel("gpt-4.1", provider=OpenAIProvider(base_url=url, api_key="test"))


trip = Agent(model(), instructions="You plan trips.", name="trip-planner")


@trip.tool_plain
@everruns_tool(effect="idempotent")
def weather(city: str) -> dict[str, object]:
    """The forecast of a city."""
    return {"city": city, "forecast": "sunny", "celsius": 24}


@trip.tool_plain
def book_hotel(city: str, nights: int) -> str:
    """Book a hotel (at_most_once: it charges a card)."""
    record_effect("charge")
    return f"booked {nights} nights in {city}"
