"""everruns: durable execution for long-lived AI agents.

The public names below are loaded on first use, so importing a part of the package
(`everruns.core`, the pure core) does not load the HTTP client, the tools or the
database drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from everruns.errors import (
    EverrunsError,
    Fenced,
    Moved,
    ProviderError,
    RetryLater,
    RunNotFound,
    SpecError,
    StoreError,
    ToolError,
)

if TYPE_CHECKING:
    from everruns.client import AsyncClient, Client
    from everruns.spec import AgentSpec, load_spec
    from everruns.tools import Tool, ToolContext, tool

_LAZY = {
    "AgentSpec": "everruns.spec",
    "load_spec": "everruns.spec",
    "AsyncClient": "everruns.client",
    "Client": "everruns.client",
    "Tool": "everruns.tools",
    "ToolContext": "everruns.tools",
    "tool": "everruns.tools",
}

__all__ = [
    "AgentSpec",
    "AsyncClient",
    "Client",
    "EverrunsError",
    "Fenced",
    "Moved",
    "ProviderError",
    "RetryLater",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'everruns' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
