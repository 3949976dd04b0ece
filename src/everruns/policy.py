"""Operator policy beats the spec: what a spec may use, given where it came from.

A spec's origin is "local" (loaded from a file by the CLI, or built in-process by the
operator's own code) or "api" (submitted through the HTTP API). The stored agent
version remembers it, so the worker checks again before anything runs:

- tool kinds: `shell`, `python` and stdio `mcp` (a `command`) run code on the worker;
  API specs may use them only if `api_specs.allow_tools` lists them;
- Python tools from API specs may come only from `api_specs.python_modules` (checked
  before anything is imported); a `provider: python` model is Python code too, under the
  same two rules;
- credentials: see everruns.credentials;
- SSRF: checked where the web tools are built (a spec can only narrow the guard).
"""

from __future__ import annotations

from collections.abc import Mapping

from everruns.credentials import CredentialError, check_credentials, models_of
from everruns.providers.pricing import check_unpriced
from everruns.settings import Settings
from everruns.spec import AgentSpec, ToolSpec
from everruns.tools.registry import ToolSpecError


class PolicyError(ToolSpecError):
    """The spec asks for something the operator's policy does not allow."""


def tool_kind(entry: ToolSpec) -> str | None:
    """The policy kind of a tool entry, or None for kinds any spec may use."""
    if entry.python is not None:
        return "python"
    if entry.builtin == "shell":
        return "shell"
    if entry.mcp is not None and entry.mcp.get("command") is not None:
        return "mcp_stdio"
    return None


def _module_allowed(module: str, allowed: list[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in allowed)


def check_models(spec: AgentSpec, origin: str, settings: Settings) -> None:
    """A `provider: python` model runs Python code on the worker: API specs need the
    operator's leave, as for Python tools."""
    if origin == "local":
        return
    policy = settings.api_specs
    for field, model in models_of(spec):
        if model.provider != "python" or (spec.agent is not None and field == "model"):
            continue  # a framework agent's `model` is a label; `check_framework` judges it
        if "python" not in policy.allow_tools:
            raise PolicyError(
                f"{field}.function",
                "a `provider: python` model is not allowed in specs submitted through the API "
                "(the operator can allow it: settings `api_specs.allow_tools: [python]`)",
            )
        module = (model.function or "").partition(":")[0]
        if not _module_allowed(module, policy.python_modules):
            listed = ", ".join(policy.python_modules) or "none"
            raise PolicyError(
                f"{field}.function",
                f"module {module!r} is not one the operator allows API specs to import "
                f"code from (settings `api_specs.python_modules`: {listed})",
            )


def check_framework(spec: AgentSpec, origin: str, settings: Settings) -> None:
    """A framework agent (`agent: {python: ...}`) is Python code the worker imports: API
    specs need the operator's leave, exactly as for Python tools."""
    if origin == "local" or spec.agent is None:
        return
    policy = settings.api_specs
    if "python" not in policy.allow_tools:
        raise PolicyError(
            "agent.python",
            "a framework agent is Python code and is not allowed in specs submitted through "
            "the API (the operator can allow it: settings `api_specs.allow_tools: [python]`)",
        )
    module = spec.agent.python.partition(":")[0]
    if not _module_allowed(module, policy.python_modules):
        listed = ", ".join(policy.python_modules) or "none"
        raise PolicyError(
            "agent.python",
            f"module {module!r} is not one the operator allows API specs to import "
            f"code from (settings `api_specs.python_modules`: {listed})",
        )


def check_tools(spec: AgentSpec, origin: str, settings: Settings) -> None:
    if origin == "local":
        return
    if spec.python_path is not None:
        raise PolicyError(
            "python_path",
            "only specs loaded from local files may name directories to import code from "
            "(API specs import from the server's PYTHONPATH and `api_specs.python_modules`)",
        )
    policy = settings.api_specs
    for index, entry in enumerate(spec.tools):
        kind = tool_kind(entry)
        if kind is None:
            continue
        field = f"tools[{index}]" + {"python": ".python", "shell": ".builtin"}.get(kind, ".mcp")
        if kind not in policy.allow_tools:
            what = {"python": "Python tools are", "shell": "the shell tool is"}.get(
                kind, "stdio MCP servers (`command`) are"
            )
            raise PolicyError(
                field,
                f"{what} not allowed in specs submitted through the API "
                f"(the operator can allow them: settings `api_specs.allow_tools: [{kind}]`)",
            )
        if kind == "python":
            assert entry.python is not None
            module = entry.python.partition(":")[0]
            if not _module_allowed(module, policy.python_modules):
                listed = ", ".join(policy.python_modules) or "none"
                raise PolicyError(
                    field,
                    f"module {module!r} is not one the operator allows API specs to import "
                    f"tools from (settings `api_specs.python_modules`: {listed})",
                )


def check_spec(
    spec: AgentSpec,
    origin: str,
    settings: Settings,
    stored: Mapping[str, list[str]],
    *,
    spawned: bool = False,
) -> None:
    """Raise PolicyError if the operator's policy does not allow this spec from `origin`.

    `spawned`: a sub-agent spec written by a model, which may never name raw variables.
    `stored`: stored secrets' names and the URL patterns each may be sent to.
    """
    check_tools(spec, origin, settings)
    check_framework(spec, origin, settings)
    check_models(spec, origin, settings)
    unpriced = check_unpriced(spec, settings.prices)
    if unpriced is not None:
        raise PolicyError("limits.max_cost_usd", unpriced)
    try:
        check_credentials(spec, "api" if spawned else origin, settings, stored)
    except CredentialError as exc:
        raise PolicyError(exc.field, exc.message) from None
