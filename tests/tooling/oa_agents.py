"""OpenAI Agents SDK agents for tests/integrations: a triage agent that hands off to a
booking agent with two tools, a variant whose booking needs a human's approval (the SDK's
own `needs_approval`), a concierge whose tools are a real stdio MCP server
(tests/tooling/oa_mcp.py), and a greeter that reads the run context (`greeting`: with its
context_type, for workers); all on the SDK's chat-completions model sent to the loopback
fake server named by PAI_OPENAI_URL (tests/helpers.FakeOpenAI)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, RunContextWrapper, function_tool
from agents.mcp import MCPServerStdio
from openai import AsyncOpenAI

from everruns.integrations import everruns_tool
from everruns.integrations.openai_agents import DurableAgent
from everruns.testing.effects import append, record_effect


def model() -> OpenAIChatCompletionsModel:
    url = os.environ.get("PAI_OPENAI_URL", "http://127.0.0.1:9/v1")
    return OpenAIChatCompletionsModel("gpt-4.1", AsyncOpenAI(base_url=url, api_key="test"))


@everruns_tool(effect="idempotent")
@function_tool
def weather(city: str) -> str:
    """The forecast of a city."""
    return f"{city}: sunny, 24C"


def _book(city: str, nights: int) -> str:
    record_effect("charge")
    return f"booked {nights} nights in {city}"


@function_tool
def book_hotel(city: str, nights: int) -> str:
    """Book a hotel (at_most_once: it charges a card)."""
    return _book(city, nights)


@function_tool(name_override="book_hotel", needs_approval=True)
def book_hotel_approved(city: str, nights: int) -> str:
    """Book a hotel, once a human approved it."""
    return _book(city, nights)


booking = Agent(
    name="Booking agent", instructions="You book trips.", model=model(), tools=[weather, book_hotel]
)
triage = Agent(name="Triage", instructions="Route the user.", model=model(), handoffs=[booking])
careful = Agent(
    name="Careful",
    instructions="You book trips.",
    model=model(),
    tools=[weather, book_hotel_approved],
)

concierge = Agent(
    name="Concierge",
    instructions="You reserve tables.",
    model=model(),
    mcp_servers=[
        MCPServerStdio(
            {
                "command": sys.executable,
                "args": [str(Path(__file__).with_name("oa_mcp.py"))],
                "env": dict(os.environ),  # OA_MCP_LEDGER
            },
            name="concierge",
        )
    ],
)


# ---- the run context: a dataclass (with context_type), else its JSON (a dict).


@dataclass
class Traveller:
    name: str
    city: str


def _field(context: Any, name: str) -> Any:
    return context[name] if isinstance(context, dict) else getattr(context, name)


def _greeting(ctx: RunContextWrapper[Any], agent: Agent[Any]) -> str:
    return f"You greet {_field(ctx.context, 'name')}."  # in every request: replay checks it


@everruns_tool(effect="idempotent")
@function_tool
def greet(ctx: RunContextWrapper[Any]) -> str:
    """Greet the traveller (idempotent: run again after a crash, seeing the rebuilt context)."""
    context = ctx.context
    kind = type(context).__name__
    append({"kind": "context", "type": kind, "name": _field(context, "name")})
    return f"hello {_field(context, 'name')} in {_field(context, 'city')} ({kind})"


greeter = Agent(name="Greeter", instructions=_greeting, model=model(), tools=[greet])
greeting = DurableAgent(greeter, context_type=Traveller)
