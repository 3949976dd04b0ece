"""Error classification shared by all providers, and rate-limit header parsing.

| class            | retryable | policy                                                        |
|------------------|-----------|---------------------------------------------------------------|
| rate_limited     | yes       | wait as long as the server asks (headers), else back off      |
| overloaded       | yes       | back off; counts toward the circuit breaker                   |
| server_error     | yes       | back off; counts toward the circuit breaker                   |
| timeout          | yes       | back off; counts toward the circuit breaker                   |
| connection       | yes       | back off; counts toward the circuit breaker                   |
| stream_broken    | yes       | the stream died or ended without a finish; call again         |
| bad_request      | no        | fail fast with the provider's message (and parameter)        |
| invalid_request  | no        | fail fast: the request could not be built or sent (the SDK    |
|                  |           | rejected an option, naming the parameter)                     |
| internal_error   | no        | fail fast: an unexpected exception inside the provider code   |
| auth             | no        | fail fast (a missing or wrong key does not heal by waiting)   |
| context_too_long | no        | fail fast (reason context_too_long)                           |
| content_refused  | no        | fail fast (the provider refused the content)                  |
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from everruns.providers.base import ProviderError

RETRYABLE = {"rate_limited", "overloaded", "server_error", "timeout", "connection", "stream_broken"}
BREAKER_CLASSES = {"overloaded", "server_error", "timeout", "connection", "stream_broken"}

# Context overflow as servers word it: OpenAI (`context_length_exceeded`, "maximum context
# length"), Anthropic ("prompt is too long", "exceed context limit"), llama.cpp
# (`exceed_context_size_error`, "exceeds the available context size"), llama-cpp-python
# ("exceed context window"), vLLM ("maximum context length", "maximum model length"),
# Ollama ("exceeds the context length"), LiteLLM (`ContextWindowExceededError`) and
# TGI ("`inputs` tokens + `max_new_tokens` must be <=").
_CONTEXT_PATTERNS = re.compile(
    r"context.length|context window|context limit|maximum context|too many tokens|"
    r"prompt is too long|context_length_exceeded|input is too long|input tokens exceed|"
    r"exceed_context_size|context size|maximum model length|contextwindowexceeded|"
    r"max_new_tokens. must be|maximum number of tokens",
    re.I,
)
_REFUSAL_PATTERNS = re.compile(r"content.?(policy|filter|management)|refus|safety", re.I)
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _go_duration(text: str) -> float | None:
    """OpenAI's `x-ratelimit-reset-*` values: `1s`, `6m0s`, `250ms`, `1h2m3.5s`."""
    parts = _GO_DURATION.findall(text.strip())
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _timestamp_delay(text: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now)


def retry_after_from_headers(
    headers: Mapping[str, str] | None, *, rate_limited: bool = False, now: float | None = None
) -> float | None:
    """Seconds the server asks us to wait, from whichever header says so.

    `retry-after-ms` wins over `retry-after` (seconds or an HTTP date). For a
    429 without either, the longest `x-ratelimit-reset-*` / `anthropic-ratelimit-*-reset`
    among exhausted quotas is used.
    """
    if not headers:
        return None
    now = time.time() if now is None else now
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in h:
        value = h["retry-after"].strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    if not rate_limited:
        return None
    waits: list[float] = []
    for key, value in h.items():
        if key.startswith("x-ratelimit-reset-"):
            kind = key.removeprefix("x-ratelimit-reset-")
            if h.get(f"x-ratelimit-remaining-{kind}", "0") in ("0", "0.0"):
                seconds = _go_duration(value)
                if seconds is not None:
                    waits.append(seconds)
        elif key.startswith("anthropic-ratelimit-") and key.endswith("-reset"):
            kind = key.removeprefix("anthropic-ratelimit-").removesuffix("-reset")
            if h.get(f"anthropic-ratelimit-{kind}-remaining", "0") in ("0", "0.0"):
                seconds = _timestamp_delay(value, now)
                if seconds is not None:
                    waits.append(seconds)
    return max(waits) if waits else None


def classify_status(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    error_type: str | None = None,
) -> ProviderError:
    """A ProviderError for an HTTP error status and the provider's message."""
    text = f"{error_type or ''} {message}"
    if status == 429:
        return ProviderError(
            message,
            error_class="rate_limited",
            retryable=True,
            status=status,
            retry_after=retry_after_from_headers(headers, rate_limited=True),
        )
    if status == 529 or (error_type or "").startswith("overloaded"):
        return ProviderError(
            message,
            error_class="overloaded",
            retryable=True,
            status=status,
            retry_after=retry_after_from_headers(headers),
        )
    if status in (401, 403):
        return ProviderError(message, error_class="auth", retryable=False, status=status)
    if status == 408:
        return ProviderError(message, error_class="timeout", retryable=True, status=status)
    if status == 413 or _CONTEXT_PATTERNS.search(text):
        return ProviderError(
            message, error_class="context_too_long", retryable=False, status=status
        )
    if status >= 500:
        return ProviderError(
            message,
            error_class="server_error",
            retryable=True,
            status=status,
            retry_after=retry_after_from_headers(headers),
        )
    if status in (400, 422) and _REFUSAL_PATTERNS.search(text):
        return ProviderError(message, error_class="content_refused", retryable=False, status=status)
    return ProviderError(message, error_class="bad_request", retryable=False, status=status)
