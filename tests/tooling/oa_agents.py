"""OpenAI Agents SDK agents for tests/integrations: a triage agent that hands off to a
booking agent with two tools, on the SDK's chat-completions model sent to the loopback fake
server named by PAI_OPENAI_URL (tests/helpers.FakeOpenAI)."""

from __future__ import annotations

import os

from agents import Agent, OpenAIChatCompletionsModel, function_tool
from openai import AsyncOpenAI

from everruns.integrations import everruns_tool
from everruns.testing.effects import record_effect


def model() -> OpenAIChatCompletionsModel:
    url = os.environ.get("PAI_OPENAI_URL", "http://127.0.0.1:9/v1")
    return OpenAIChatCompletionsModel("gpt-4.1", AsyncOpenAI(base_url=url, api_key="test"))


@everruns_tool(effect="idempotent")
@function_tool
def weather(city: str) -> str:
    """The forecast of a city."""
    return f"{city}: sunny, 24C"


@function_tool
def book_hotel(city: str, nights: int) -> str:
    """Book a hotel (at_most_once: it charges a card)."""
    record_effect("charge")
    return f"booked {nights} nights in {city}"


booking = Agent(
    name="Booking agent", instructions="You book trips.", model=model(), tools=[weather, book_hotel]
)
triage = Agent(name="Triage", instructions="Route the user.", model=model(), handoffs=[booking])
