"""Provider options (`model.parameters`) checked against what the installed SDK accepts.

A key that the SDK's `create()` takes as a keyword passes through as that keyword; any
other key (a server-specific option such as llama.cpp's `ignore_eos`, or `temperature`
on an Anthropic SDK that no longer takes it) is sent in the request body through the
SDK's `extra_body`. Keys that everruns sets itself are rejected, naming the parameter,
so a spec that cannot work fails at `everruns validate` and at run creation instead of
crashing the run at its first LLM call.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from typing import Any

# Set by everruns on every call; a spec cannot override them.
RESERVED = frozenset(
    {
        "self",
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "system",
        "timeout",
        "extra_headers",
        "extra_query",
        "functions",
        "function_call",
    }
)
# Spelled elsewhere in the spec, where they are mapped per provider.
MOVED = {"tool_choice": "model.tool_choice"}
_INTS = {"max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "top_k"}
_NUMBERS = {"temperature", "top_p", "frequency_penalty", "presence_penalty"}


@functools.cache
def sdk_keywords(provider: str) -> frozenset[str]:
    """The keyword arguments of the installed SDK's streaming create() call."""
    if provider == "anthropic":
        from anthropic.resources.messages import AsyncMessages

        create: Any = AsyncMessages.create
    else:
        from openai.resources.chat.completions import AsyncCompletions

        create = AsyncCompletions.create
    return frozenset(inspect.signature(create).parameters) - {"self"}


def split_parameters(provider: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for create(): known keys as is, the rest merged into extra_body."""
    known = sdk_keywords(provider)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = dict(params.get("extra_body") or {})
    for key, value in params.items():
        if key == "extra_body":
            continue
        if key in known:
            kwargs[key] = value
        else:
            extra[key] = value
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def parameter_problems(provider: str, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with `model.parameters` for this provider, one sentence each."""
    if provider == "scripted":
        return []
    problems: list[str] = []
    for key, value in params.items():
        name = f"parameters.{key}"
        if key in RESERVED:
            problems.append(f"{name}: is set by everruns and cannot be given")
        elif key in MOVED:
            problems.append(f"{name}: write it as {MOVED[key]}")
        elif key == "extra_body" and not isinstance(value, dict):
            problems.append(f"{name}: must be a mapping of request-body fields")
        elif key in _INTS and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name}: must be an integer, not {value!r}")
        elif key in _INTS and value < 1 and key != "seed":
            problems.append(f"{name}: must be at least 1, not {value!r}")
        elif key in _NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{name}: must be a number, not {value!r}")
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                problems.append(f"{name}: is not JSON data ({type(value).__name__})")
    return problems
