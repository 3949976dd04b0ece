"""Pydantic AI agents for tests/integrations and the UI tests: pydantic-ai's own OpenAI
chat model, sent to the loopback fake server named by PAI_OPENAI_URL
(tests/helpers.FakeOpenAI), which streams when asked to. `host` takes deps (a dataclass)
and its tool writes what it saw of them to the execution ledger."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent, RunContext
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from everruns.integrations import everruns_tool
from everruns.testing.effects import append, record_effect


def model() -> OpenAIChatModel:
    url = os.environ.get("PAI_OPENAI_URL", "http://127.0.0.1:9/v1")
    return OpenAIChatModel("gpt-4.1", provider=OpenAIProvider(base_url=url, api_key="test"))


# The reservations MCP server (pai_mcp.py), started by the toolset over stdio; it inherits
# this process's environment (the crash matrix's ledger).
reservations = MCPToolset(
    StdioTransport(
        sys.executable, [str(Path(__file__).with_name("pai_mcp.py"))], env=dict(os.environ)
    ),
    id="reservations",
)

trip = Agent(model(), instructions="You plan trips.", name="trip-planner", toolsets=[reservations])


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


# ---- deps: a dataclass the journaled JSON deps are validated back as, in any worker.


@dataclass
class Guest:
    name: str
    nights: int


host = Agent(model(), deps_type=Guest, name="host")


@host.instructions
def _guest(ctx: RunContext[Guest]) -> str:
    return f"You welcome {ctx.deps.name}."  # in every request: a replay checks the deps


@host.tool
@everruns_tool(effect="idempotent")
def welcome(ctx: RunContext[Guest]) -> str:
    """Welcome the guest (idempotent: run again after a crash, seeing the rebuilt deps)."""
    guest = ctx.deps
    append({"kind": "deps", "type": type(guest).__name__, "deps": asdict(guest)})
    return f"welcome {guest.name}, {guest.nights} nights"
