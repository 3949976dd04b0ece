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
from collections.abc import Mapping
from typing import Any

from everruns.spec import MOVED, RESERVED, parameter_problems

__all__ = ["MOVED", "RESERVED", "parameter_problems", "sdk_keywords", "split_parameters"]


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
