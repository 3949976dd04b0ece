"""everruns: durable execution for long-lived AI agents."""

from everruns.client import AsyncClient, Client
from everruns.providers.base import ProviderError
from everruns.spec import AgentSpec, load_spec
from everruns.tools import Tool, ToolContext, ToolError, tool

__all__ = [
    "AgentSpec",
    "AsyncClient",
    "Client",
    "ProviderError",
    "Tool",
    "ToolContext",
    "ToolError",
    "load_spec",
    "tool",
]
__version__ = "0.1.0"
