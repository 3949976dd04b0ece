"""Build the tools of an agent spec."""

from __future__ import annotations

from everruns.spec import AgentSpec
from everruns.tools.base import Tool
from everruns.tools.builtins import build_builtin
from everruns.tools.python import ToolLoadError, from_function, load_function


class ToolSpecError(Exception):
    """A tool entry of the spec cannot be loaded; `field` is its path in the spec."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def build_tools(spec: AgentSpec, *, allow_private_networks: bool = False) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for index, entry in enumerate(spec.tools):
        field = f"tools[{index}]"
        if entry.python is not None:
            try:
                fn = load_function(entry.python)
            except ToolLoadError as exc:
                raise ToolSpecError(f"{field}.python", str(exc)) from None
            loaded = [from_function(fn, effect=entry.effect, timeout=entry.timeout)]
        elif entry.builtin is not None:
            try:
                loaded = build_builtin(entry, allow_private_networks=allow_private_networks)
            except ValueError as exc:
                raise ToolSpecError(f"{field}.builtin", str(exc)) from None
        else:
            raise ToolSpecError(f"{field}.mcp", "MCP tools are not available in this version")
        for tool in loaded:
            if tool.name in tools:
                raise ToolSpecError(field, f"duplicate tool name {tool.name!r}")
            tools[tool.name] = tool
    return tools
