"""Python function tools: `@tool(effect=...)` and `package.module:function` loading.

The JSON schema the model sees comes from the type hints; the description from
the docstring (its first paragraph, plus `Args:` lines for parameters).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from everruns.errors import EverrunsError
from everruns.spec import EFFECTS
from everruns.tools.base import Tool, ToolContext, ToolError

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__everruns_tool__"


class ToolLoadError(EverrunsError):
    """A `python:` tool reference that cannot be imported."""


def tool(
    fn: F | None = None,
    *,
    effect: str = "at_most_once",
    name: str | None = None,
    timeout: float | None = None,
    workspace: bool = False,
) -> Any:
    """Declare a Python function as a tool. `effect`: pure, idempotent or at_most_once.

    `workspace=True`: the tool reads or writes the run's workspace (`ctx.workspace`);
    such calls run one at a time, so each call's file changes are journaled with it.
    """
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {', '.join(EFFECTS)}, not {effect!r}")

    def mark(func: F) -> F:
        setattr(
            func,
            _ATTR,
            {"effect": effect, "name": name, "timeout": timeout, "workspace": workspace},
        )
        return func

    return mark(fn) if fn is not None else mark


def _docstring_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].strip()
    params: dict[str, str] = {}
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if section:
        for line in section.group(1).splitlines():
            m = re.match(r"\s*(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)", line)
            if m:
                params[m.group(1)] = m.group(2).strip()
    return summary, params


def from_function(
    fn: Callable[..., Any], *, effect: str | None = None, timeout: float | None = None
) -> Tool:
    meta = getattr(fn, _ATTR, {})
    tool_name = meta.get("name") or fn.__name__
    hints = get_type_hints(fn)
    summary, param_docs = _docstring_parts(fn)
    fields: dict[str, Any] = {}
    context_params: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        annotation = hints.get(pname, Any)
        if annotation is ToolContext:
            context_params.append(pname)
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        from pydantic import Field

        fields[pname] = (annotation, Field(default, description=param_docs.get(pname)))
    args_model: type[BaseModel] = create_model(
        f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields
    )
    schema = args_model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    is_async = inspect.iscoroutinefunction(fn)

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        try:
            parsed = args_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolError(f"invalid arguments for {tool_name}: {problems}") from None
        kwargs = {k: getattr(parsed, k) for k in fields}
        for pname in context_params:
            kwargs[pname] = ctx
        if is_async:
            return await fn(**kwargs)
        return await asyncio.to_thread(functools.partial(fn, **kwargs))

    return Tool(
        name=tool_name,
        description=summary or tool_name,
        parameters=schema,
        effect=effect or meta.get("effect") or "at_most_once",
        invoke=invoke,
        timeout=timeout if timeout is not None else meta.get("timeout"),
        uses_workspace=bool(meta.get("workspace", False)),
    )


def load_function(path: str, search: list[str] | None = None) -> Callable[..., Any]:
    """Import `package.module:function` from the `search` directories (a spec file's
    `python_path`), the working directory or PYTHONPATH."""
    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()
    for directory in [*(search or []), cwd][::-1]:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = ", ".join([*(search or []), f"the working directory ({cwd})"])
        raise ToolLoadError(
            f"cannot import module {module_name!r}: {exc} (looked in {where} and PYTHONPATH; "
            "a spec's `python_path` names directories relative to the spec file)"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ToolLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ToolLoadError(f"{path!r} is not a function")
    if not (inspect.isfunction(obj) and _ATTR in vars(obj)):
        # Never an arbitrary callable (os:system, builtins:eval): only declared tools.
        raise ToolLoadError(
            f"{path!r} is not a function decorated with @everruns.tool "
            "(only declared tools can be used)"
        )
    return obj
