"""A Pydantic AI agent whose hotel booking waits for a human through Pydantic AI's own
`requires_approval=True` (everruns parks the run until `everruns approve/deny` or the UI
decides). Its own module, without the MCP toolset of pai_agents.py, so a worker process
that runs it imports less."""

from __future__ import annotations

import os

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from everruns.integrations import everruns_tool
from everruns.testing.effects import record_effect

url = os.environ.get("PAI_OPENAI_URL", "http://127.0.0.1:9/v1")
booker = Agent(
    OpenAIChatModel("gpt-4.1", provider=OpenAIProvider(base_url=url, api_key="test")),
    instructions="You book hotels.",
    name="hotel-booker",
)


@booker.tool_plain
@everruns_tool(effect="idempotent")
def weather(city: str) -> dict[str, object]:
    """The forecast of a city."""
    return {"city": city, "forecast": "sunny", "celsius": 24}


@booker.tool_plain(requires_approval=True)
def book(city: str, nights: int) -> str:
    """Book a hotel once a human approved it (at_most_once: it charges a card)."""
    record_effect("charge")
    return f"booked {nights} nights in {city}"
