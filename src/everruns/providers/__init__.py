"""LLM providers behind one protocol."""

from __future__ import annotations

from everruns.providers.base import (
    LLMRequest,
    LLMResponse,
    Provider,
    ProviderError,
    ToolSchema,
)
from everruns.spec import ModelSpec


class UnknownProvider(ValueError):
    pass


def get_provider(model: ModelSpec) -> Provider:
    """The provider implementation for a model spec."""
    if model.provider == "scripted":
        from everruns.providers.scripted import ScriptedProvider

        return ScriptedProvider()
    raise UnknownProvider(f"unknown provider {model.provider!r} (available: scripted)")


__all__ = [
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ProviderError",
    "ToolSchema",
    "UnknownProvider",
    "get_provider",
]
