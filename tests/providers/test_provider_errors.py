"""Fast unit tests: error classification, rate-limit headers, message conversion.

No network: `classify_status` and `retry_after_from_headers` are fed the status
codes, bodies and headers that OpenAI and Anthropic really send (messages quoted
from their APIs), and the converters are fed transcripts as the journal folds them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from everruns.core.events import Event, EventType
from everruns.core.state import fold, transcript
from everruns.providers.anthropic_messages import to_anthropic_messages
from everruns.providers.base import (
    INVALID_ARGUMENTS,
    ProviderError,
    parse_arguments,
    stream_with_idle_timeout,
)
from everruns.providers.errors import (
    BREAKER_CLASSES,
    RETRYABLE,
    classify_status,
    retry_after_from_headers,
)
from everruns.providers.openai_chat import to_openai_messages
from everruns.providers.pricing import cost_usd, price_for
from everruns.providers.sdk import translate_sdk_error
from everruns.spec import ModelSpec

NOW = 1_750_000_000.0  # a fixed "now" so HTTP dates and ISO timestamps are exact


def openai_translate(exc: Exception) -> ProviderError:
    return translate_sdk_error(exc, openai)


def anthropic_translate(exc: Exception) -> ProviderError:
    return translate_sdk_error(exc, anthropic)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 20 "}, 20.0),
        ({"retry-after": "-3"}, 0.0),  # never a negative wait
        ({"retry-after": "soon"}, None),  # unparseable: no opinion
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500"}, 1.5),  # header names are case-insensitive
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after-ms": "nope", "retry-after": "9"}, 9.0),  # falls back
    ],
)
def test_retry_after_seconds_and_ms(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_from_headers(headers, now=NOW) == expected


def test_retry_after_http_date() -> None:
    future = formatdate(NOW + 30, usegmt=True)  # e.g. "Sun, 15 Jun 2025 15:07:10 GMT"
    assert retry_after_from_headers({"Retry-After": future}, now=NOW) == pytest.approx(30.0)
    past = formatdate(NOW - 30, usegmt=True)
    assert retry_after_from_headers({"Retry-After": past}, now=NOW) == 0.0


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("20ms", 0.02), ("6m0s", 360.0), ("1h2m3.5s", 3723.5)],
)
def test_openai_ratelimit_reset_go_durations(reset: str, seconds: float) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}
    assert retry_after_from_headers(headers, rate_limited=True, now=NOW) == pytest.approx(seconds)


def test_openai_ratelimit_uses_only_exhausted_quotas_and_the_longest() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "1200",  # not exhausted: its reset does not matter
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_after_from_headers(headers, rate_limited=True, now=NOW) == 2.0
    headers["x-ratelimit-remaining-tokens"] = "0"
    assert retry_after_from_headers(headers, rate_limited=True, now=NOW) == 360.0
    # Only a 429 makes the quota headers a wait: on a 200 or 5xx they are information.
    assert retry_after_from_headers(headers, rate_limited=False, now=NOW) is None
    # An explicit Retry-After beats the quota headers.
    assert retry_after_from_headers({**headers, "retry-after": "3"}, rate_limited=True) == 3.0


def test_anthropic_ratelimit_reset_timestamps() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": iso(NOW + 12),
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": iso(NOW + 40),
        "anthropic-ratelimit-output-tokens-remaining": "8000",  # not exhausted
        "anthropic-ratelimit-output-tokens-reset": iso(NOW + 300),
    }
    assert retry_after_from_headers(headers, rate_limited=True, now=NOW) == pytest.approx(40.0)
    # A reset already in the past means "now", not a negative wait.
    past = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": iso(NOW - 5),
    }
    assert retry_after_from_headers(past, rate_limited=True, now=NOW) == 0.0
    # Garbage timestamps are ignored, not fatal.
    bad = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "tomorrow",
    }
    assert retry_after_from_headers(bad, rate_limited=True, now=NOW) is None


# ---------------------------------------------------------------- classify_status


CONTEXT_MESSAGES = [
    # OpenAI chat models
    "This model's maximum context length is 128000 tokens. However, your messages "
    "resulted in 130412 tokens. Please reduce the length of the messages.",
    # OpenAI GPT-5 family (400, code context_length_exceeded)
    "Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in "
    "289650 tokens. Please reduce the length of the messages.",
    # Anthropic
    "prompt is too long: 210571 tokens > 200000 maximum",
    "input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, "
    "decrease input length or `max_tokens` and try again",
]


@pytest.mark.parametrize(
    ("status", "message", "error_type", "expected_class", "retryable"),
    [
        (429, "Rate limit reached for requests", "rate_limit_error", "rate_limited", True),
        (529, "Overloaded", "overloaded_error", "overloaded", True),
        (503, "Overloaded", "overloaded_error", "overloaded", True),  # Anthropic's 503 body
        (500, "Internal server error", "api_error", "server_error", True),
        (502, "Bad gateway", None, "server_error", True),
        (503, "Service unavailable", "server_error", "server_error", True),  # OpenAI's 503
        (504, "Gateway timeout", None, "server_error", True),
        (408, "Request timeout", None, "timeout", True),
        (401, "Incorrect API key provided: sk-***", "authentication_error", "auth", False),
        (403, "Your organization lacks access", "permission_error", "auth", False),
        (413, "Request exceeds the maximum size", "request_too_large", "context_too_long", False),
        (400, CONTEXT_MESSAGES[0], "invalid_request_error", "context_too_long", False),
        (400, CONTEXT_MESSAGES[1], "invalid_request_error", "context_too_long", False),
        (400, CONTEXT_MESSAGES[2], "invalid_request_error", "context_too_long", False),
        (400, CONTEXT_MESSAGES[3], "invalid_request_error", "context_too_long", False),
        (
            400,
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy",
            "invalid_request_error content_policy_violation",
            "content_refused",
            False,
        ),
        (400, "Your request was rejected by the safety system", None, "content_refused", False),
        (
            400,
            "Invalid value for 'temperature': must be <= 2",
            "invalid_request_error",
            "bad_request",
            False,
        ),
        (404, "The model `gpt-9` does not exist", "not_found_error", "bad_request", False),
        (422, "messages: field required", None, "bad_request", False),
    ],
)
def test_classify_status(
    status: int, message: str, error_type: str | None, expected_class: str, retryable: bool
) -> None:
    err = classify_status(status, message, {}, error_type)
    assert isinstance(err, ProviderError)
    assert (err.error_class, err.retryable, err.status) == (expected_class, retryable, status)
    assert err.message == message  # the provider's own words reach the journal
    # The table in errors.py: the retryable flag and the RETRYABLE set agree.
    assert (err.error_class in RETRYABLE) == retryable


def test_classify_status_carries_the_servers_wait() -> None:
    assert classify_status(429, "slow down", {"retry-after": "2"}).retry_after == 2.0
    assert classify_status(503, "busy", {"retry-after-ms": "1500"}).retry_after == 1.5
    assert classify_status(529, "overloaded", {"retry-after": "4"}).retry_after == 4.0
    quota = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "750ms"}
    assert classify_status(429, "slow down", quota).retry_after == 0.75
    assert classify_status(429, "slow down", {}).retry_after is None  # back off instead
    # Fail-fast classes never ask for a wait.
    assert classify_status(400, "bad", {"retry-after": "5"}).retry_after is None


def test_breaker_classes_are_retryable_and_exclude_rate_limits() -> None:
    # A 429 is the provider working as designed: it must not open the breaker.
    assert BREAKER_CLASSES <= RETRYABLE
    assert "rate_limited" not in BREAKER_CLASSES


# ---------------------------------------------------------------- SDK errors


def _response(status: int, body: dict[str, Any], url: str, headers: dict[str, str]) -> Any:
    return httpx2.Response(status, json=body, headers=headers, request=httpx2.Request("POST", url))


def test_openai_sdk_error_uses_code_and_headers() -> None:
    body = {
        "error": {
            "message": CONTEXT_MESSAGES[1].replace("Input tokens exceed", "Too much input:"),
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    resp = _response(400, body, "http://x/v1/chat/completions", {})
    err = openai_translate(openai.BadRequestError("400", response=resp, body=body["error"]))
    # The message alone no longer says "context", the `code` still does.
    assert err.error_class == "context_too_long" and not err.retryable
    rate = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    resp = _response(429, rate, "http://x/v1/chat/completions", {"retry-after-ms": "1200"})
    err = openai_translate(openai.RateLimitError("429", response=resp, body=rate["error"]))
    assert (err.error_class, err.retry_after, err.message) == (
        "rate_limited",
        1.2,
        "Rate limit reached",
    )


def test_anthropic_sdk_error_uses_type() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    resp = _response(529, body, "http://x/v1/messages", {})
    err = anthropic_translate(anthropic.APIStatusError("529", response=resp, body=body))
    assert (err.error_class, err.retryable, err.message) == ("overloaded", True, "Overloaded")


def test_transport_errors_are_classified() -> None:
    request = httpx2.Request("POST", "http://x")
    assert openai_translate(openai.APITimeoutError(request=request)).error_class == "timeout"
    assert openai_translate(openai.APIConnectionError(request=request)).error_class == "connection"
    broken = anthropic_translate(httpx2.RemoteProtocolError("peer closed connection"))
    assert (broken.error_class, broken.retryable) == ("stream_broken", True)


# ---------------------------------------------------------------- stream idle


async def test_stream_idle_timeout_is_stream_broken() -> None:
    async def slow() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(5)
        yield 2

    got = []
    with pytest.raises(ProviderError) as info:
        async for item in stream_with_idle_timeout(slow(), 0.05):
            got.append(item)
    assert got == [1]
    assert info.value.error_class == "stream_broken" and info.value.retryable
    assert "stalled" in info.value.message


def test_parse_arguments_keeps_invalid_json_for_the_model() -> None:
    assert parse_arguments('{"key": "a"}') == {"key": "a"}
    assert parse_arguments("") == {}
    assert INVALID_ARGUMENTS in parse_arguments('{"key": "a"')
    assert INVALID_ARGUMENTS in parse_arguments("[1, 2]")


# ---------------------------------------------------------------- conversion


def _transcript_with_parallel_tools() -> list[dict[str, Any]]:
    """A transcript as the journal folds it: two parallel calls finishing out of order,
    one failing, then a user message that arrived while the tools ran."""
    events = [
        (EventType.RUN_CREATED, {"input": "look up a and b"}),
        (EventType.RUN_STARTED, {"epoch": 1}),
        (EventType.LLM_STARTED, {"attempt": 1}),
        (
            EventType.LLM_COMPLETED,
            {
                "message": {
                    "role": "assistant",
                    "content": "Looking both up.",
                    "tool_calls": [
                        {"id": "call_a", "name": "lookup", "arguments": {"key": "a"}},
                        {"id": "call_b", "name": "lookup", "arguments": {"key": "b"}},
                    ],
                },
                "usage": {"input_tokens": 10, "output_tokens": 5},
            },
        ),
        (EventType.TOOL_STARTED, {"call_id": "call_a", "name": "lookup"}),
        (EventType.TOOL_STARTED, {"call_id": "call_b", "name": "lookup"}),
        (EventType.MESSAGE_USER, {"content": "also check c"}),
        (EventType.TOOL_FAILED, {"call_id": "call_b", "name": "lookup", "error": "b: not found"}),
        (EventType.TOOL_COMPLETED, {"call_id": "call_a", "name": "lookup", "output": "a = 1"}),
    ]
    state = fold([Event(i + 1, kind, 0.0, data) for i, (kind, data) in enumerate(events)])
    return transcript(state)


def test_to_openai_messages() -> None:
    messages = _transcript_with_parallel_tools()
    out = to_openai_messages("Be brief.", messages)
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "look up a and b"},
        {
            "role": "assistant",
            "content": "Looking both up.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"key": "a"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"key": "b"}'},
                },
            ],
        },
        # Results in call order (not completion order), one tool message each.
        {"role": "tool", "tool_call_id": "call_a", "content": "a = 1"},
        {"role": "tool", "tool_call_id": "call_b", "content": "b: not found"},
        {"role": "user", "content": "also check c"},
    ]
    # No system message when there is no system prompt; a tool-only turn has "" as its
    # text, never null (bug: llama-cpp-python's server answers null with HTTP 500).
    only_calls = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "f"}]},
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": None, "is_error": False},
    ]
    out = to_openai_messages("", only_calls)
    assert out[0] == {"role": "user", "content": "hi"}
    assert (
        out[1]["content"] == ""
        and json.loads(out[1]["tool_calls"][0]["function"]["arguments"]) == {}
    )
    assert out[2] == {"role": "tool", "tool_call_id": "c1", "content": ""}


def test_to_anthropic_messages_merges_tool_results_into_one_user_turn() -> None:
    out = to_anthropic_messages(_transcript_with_parallel_tools())
    assert out == [
        {"role": "user", "content": [{"type": "text", "text": "look up a and b"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking both up."},
                {"type": "tool_use", "id": "call_a", "name": "lookup", "input": {"key": "a"}},
                {"type": "tool_use", "id": "call_b", "name": "lookup", "input": {"key": "b"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_a",
                    "content": "a = 1",
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b",
                    "content": "b: not found",
                    "is_error": True,
                },
                # The user's message joins the same turn, after the results.
                {"type": "text", "text": "also check c"},
            ],
        },
    ]
    # Roles alternate, as the Messages API requires.
    roles = [m["role"] for m in out]
    assert all(a != b for a, b in itertools.pairwise(roles))


def test_to_anthropic_messages_tool_only_turn_and_follow_up() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "name": "f"}]},
        {"role": "tool", "tool_call_id": "t1", "name": "f", "content": "ok", "is_error": False},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "again"},
        {"role": "user", "content": "and more"},
    ]
    out = to_anthropic_messages(messages)
    assert [m["role"] for m in out] == ["user", "assistant", "user", "assistant", "user"]
    assert out[1]["content"] == [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]
    assert [b["type"] for b in out[2]["content"]] == ["tool_result"]
    assert out[4]["content"] == [
        {"type": "text", "text": "again"},
        {"type": "text", "text": "and more"},
    ]


# ---------------------------------------------------------------- pricing


def test_prices() -> None:
    gpt = ModelSpec(provider="openai", name="gpt-4.1")
    assert cost_usd({"input_tokens": 1_000_000, "output_tokens": 1_000_000}, price_for(gpt)) == 10.0
    dated = ModelSpec(provider="anthropic", name="claude-sonnet-4-5-20250929")
    assert price_for(dated) is not None and price_for(dated).input == 3.0  # type: ignore[union-attr]
    # An OpenAI-compatible server is not OpenAI: no built-in price, cost 0.
    compatible = ModelSpec(provider="openai-compatible", name="gpt-4.1", base_url="http://x")
    assert price_for(compatible) is None
    assert cost_usd({"input_tokens": 10, "output_tokens": 10}, None) == 0.0
