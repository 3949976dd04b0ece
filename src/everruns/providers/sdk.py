"""What the SDK-backed providers share: the API key, a lazily built client with the
SDK's own retries off (the engine is the only layer that retries), and the
translation of any SDK failure into a classified ProviderError."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, Generic, TypeVar

import httpx2

from everruns.engine.hardening import getenv
from everruns.providers.base import DeltaCallback, LLMRequest, LLMResponse, ProviderError
from everruns.providers.errors import classify_status
from everruns.settings import RESERVED_ENV_PREFIX
from everruns.spec import ModelSpec

C = TypeVar("C")


def api_key(model: ModelSpec, default_env: str | None, given: str | None = None) -> str:
    """The key: given explicitly (the engine resolves it, see everruns.credentials), else
    from `api_key_env`, else the default variable only when no base_url redirects it."""
    if given:
        return given
    if model.credential is not None:
        raise ProviderError(
            f"credential {model.credential!r} was not resolved by the engine",
            error_class="auth",
            retryable=False,
        )
    env = model.api_key_env or (default_env if model.base_url is None else None)
    if env is None:
        return "not-needed"  # a local OpenAI-compatible server without auth
    if env.upper().startswith(RESERVED_ENV_PREFIX):
        raise ProviderError(
            f"{env} is one of the deployment's own variables and can never be a credential",
            error_class="auth",
            retryable=False,
        )
    key = getenv(env)
    if not key:
        raise ProviderError(
            f"environment variable {env} (the API key for {model.label}) is not set",
            error_class="auth",
            retryable=False,
        )
    return key


def translate_sdk_error(exc: Exception, sdk: ModuleType) -> ProviderError:
    """A ProviderError for an exception raised by the `openai` or `anthropic` SDK."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError(f"timed out: {exc}", error_class="timeout", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError(f"connection failed: {exc}", error_class="connection", retryable=True)
    if isinstance(exc, sdk.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        # `type` and `code` (e.g. context_length_exceeded) are the machine-readable
        # signals; the message text alone does not always say what happened.
        error_type = (
            " ".join(str(v) for v in (err.get("type"), err.get("code")) if v) or None
            if isinstance(err, dict)
            else None
        )
        message = (err.get("message") if isinstance(err, dict) else None) or str(exc)
        param = err.get("param") if isinstance(err, dict) else None
        if param and str(param) not in message:
            message = f"{message} (parameter {param})"
        return classify_status(exc.status_code, message, exc.response.headers, error_type)
    if isinstance(exc, httpx2.TransportError | json.JSONDecodeError | sdk.APIError):
        return ProviderError(
            f"the stream broke: {type(exc).__name__}: {exc}",
            error_class="stream_broken",
            retryable=True,
        )
    return classify_unexpected(exc)


def classify_unexpected(exc: BaseException) -> ProviderError:
    """Any other exception while building or sending a request: never retried.

    The SDK rejects a bad option with TypeError (an unknown keyword) or ValueError (a bad
    value) before anything is sent: `invalid_request`, with the SDK's words, which name
    the parameter. Anything else is a bug in the provider code: `internal_error`.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TypeError | ValueError | KeyError):
        return ProviderError(
            f"the request could not be built: {text}",
            error_class="invalid_request",
            retryable=False,
        )
    return ProviderError(
        f"unexpected error in the provider: {text}", error_class="internal_error", retryable=False
    )


class SDKProvider(ABC, Generic[C]):
    sdk: ModuleType
    default_key_env: str | None = None

    def __init__(self, model: ModelSpec, api_key: str | None = None):
        t = model.timeouts
        self.model = model
        self._api_key = api_key
        self._client: C | None = None
        self._timeout = httpx2.Timeout(t.read, connect=t.connect)

    @abstractmethod
    def _new_client(self, key: str, timeout: httpx2.Timeout) -> C:
        """The SDK's async client, with its own retries off."""

    def client(self) -> C:
        if self._client is None:
            key = api_key(self.model, self._default_env(), self._api_key)
            self._client = self._new_client(key, self._timeout)
        return self._client

    def _default_env(self) -> str | None:
        return self.default_key_env

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        try:
            return await self._complete(request, on_delta)
        except Exception as exc:
            raise translate_sdk_error(exc, self.sdk) from None

    @abstractmethod
    async def _complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        """One streamed call; any exception is translated by `complete`."""


def client_kwargs(model: ModelSpec, key: str, timeout: httpx2.Timeout) -> dict[str, Any]:
    from everruns.credentials import target_url

    # The URL the engine checked the key's binding against is the URL the SDK uses.
    return {"api_key": key, "base_url": target_url(model), "max_retries": 0, "timeout": timeout}
