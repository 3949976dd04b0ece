"""Tools: the shared protocol, Python function tools, built-ins and MCP."""

from everruns.tools.base import Tool, ToolContext, ToolError
from everruns.tools.python import tool

__all__ = ["Tool", "ToolContext", "ToolError", "tool"]
