"""LLM providers behind one protocol."""

from __future__ import annotations

import hashlib

from everruns.errors import EverrunsError
from everruns.providers.base import (
    LLMRequest,
    LLMResponse,
    Provider,
    ProviderError,
    ToolSchema,
)
from everruns.spec import ModelSpec


class UnknownProvider(EverrunsError, ValueError):
    """A spec names a provider that does not exist."""


_cache: dict[str, Provider] = {}


def get_provider(model: ModelSpec, api_key: str | None = None) -> Provider:
    """The provider for a model spec; one per configuration per process, so HTTP
    connections are shared by all the runs a worker executes. `api_key` overrides the
    environment (a key stored through the API)."""
    key = model.model_dump_json(exclude={"responses", "fallbacks"})
    if api_key:
        key += ":" + hashlib.sha256(api_key.encode()).hexdigest()
    if model.provider == "scripted":
        from everruns.providers.scripted import ScriptedProvider

        return ScriptedProvider()
    if key in _cache:
        return _cache[key]
    provider: Provider
    if model.provider == "python":
        provider = _python_provider(model)
    elif model.provider in ("openai", "openai-compatible"):
        from everruns.providers.openai_chat import OpenAIChatProvider

        provider = OpenAIChatProvider(model, api_key)
    elif model.provider == "anthropic":
        from everruns.providers.anthropic_messages import AnthropicProvider

        provider = AnthropicProvider(model, api_key)
    else:
        raise UnknownProvider(
            f"unknown provider {model.provider!r} "
            "(available: scripted, python, openai, anthropic, openai-compatible)"
        )
    _cache[key] = provider
    return provider


def _python_provider(model: ModelSpec) -> Provider:
    from everruns.providers.python import PythonProvider, load_model_function

    assert model.function is not None
    try:
        function = load_model_function(model.function)
    except ValueError as exc:
        raise UnknownProvider(f"model.function {model.function!r}: {exc}") from None
    return PythonProvider(function, model.function)


__all__ = [
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ProviderError",
    "ToolSchema",
    "UnknownProvider",
    "get_provider",
]
