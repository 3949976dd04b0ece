"""everruns: durable execution for long-lived AI agents."""

from everruns.client import AsyncClient, Client
from everruns.errors import (
    EverrunsError,
    Fenced,
    Moved,
    ProviderError,
    RunNotFound,
    SpecError,
    StoreError,
    ToolError,
)
from everruns.spec import AgentSpec, load_spec
from everruns.tools import Tool, ToolContext, tool

__all__ = [
    "AgentSpec",
    "AsyncClient",
    "Client",
    "EverrunsError",
    "Fenced",
    "Moved",
    "ProviderError",
    "RunNotFound",
    "SpecError",
    "StoreError",
    "Tool",
    "ToolContext",
    "ToolError",
    "load_spec",
    "tool",
]
__version__ = "0.1.0"
