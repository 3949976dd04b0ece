"""Provider options, request failures and streaming variations of real servers.

Options are checked against the installed SDKs' create() signatures. The streaming
tests run the real OpenAI and Anthropic SDKs against a loopback HTTP server that
replays chunk sequences the way llama.cpp, llama-cpp-python, vLLM and Ollama send them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from everruns.core.decide import MAX_CONTINUATIONS, Complete, Fail, Reason, decide
from everruns.core.events import LLM_COMPLETED, LLM_FAILED, LLM_STARTED, RUN_CREATED, Event
from everruns.core.state import fold
from everruns.providers import get_provider
from everruns.providers.base import LLMRequest, ToolSchema, merge_name
from everruns.providers.errors import classify_status
from everruns.providers.options import parameter_problems, split_parameters
from everruns.providers.pricing import cost_usd
from everruns.providers.sdk import translate_sdk_error
from everruns.spec import ModelSpec, Pricing, SpecError, parse_spec

# ---------------------------------------------------------------- options


def test_unknown_options_travel_in_extra_body() -> None:
    # Bug 1: anthropic 2.x has no `temperature` keyword; llama.cpp's `ignore_eos` is no
    # OpenAI keyword. Both reached create() as keywords and raised TypeError.
    assert split_parameters("anthropic", {"temperature": 0, "max_tokens": 50}) == {
        "max_tokens": 50,
        "extra_body": {"temperature": 0},
    }
    assert split_parameters(
        "openai-compatible", {"temperature": 0, "ignore_eos": True, "extra_body": {"top_k": 5}}
    ) == {"temperature": 0, "extra_body": {"top_k": 5, "ignore_eos": True}}
    assert split_parameters("openai", {"seed": 3}) == {"seed": 3}


@pytest.mark.parametrize(
    ("provider", "params", "problem"),
    [
        ("anthropic", {"messages": []}, "parameters.messages: is set by everruns"),
        ("openai", {"stream": False}, "parameters.stream: is set by everruns"),
        ("openai", {"tool_choice": "required"}, "parameters.tool_choice: write it as model."),
        ("openai", {"max_tokens": "many"}, "parameters.max_tokens: must be an integer"),
        ("anthropic", {"max_tokens": 0}, "parameters.max_tokens: must be at least 1"),
        ("openai", {"temperature": "hot"}, "parameters.temperature: must be a number"),
        ("openai", {"extra_body": [1]}, "parameters.extra_body: must be a mapping"),
    ],
)
def test_bad_options_are_named(provider: str, params: dict[str, Any], problem: str) -> None:
    (found,) = parameter_problems(provider, params)
    assert found.startswith(problem)
    spec = {"name": "a", "model": {"provider": provider, "name": "m", "parameters": params}}
    if provider == "openai":
        spec["model"]["base_url"] = "http://127.0.0.1:1/v1"
    with pytest.raises(SpecError) as info:
        parse_spec(spec, "agent.yaml")
    assert problem in str(info.value) and "agent.yaml: model" in str(info.value)


def test_good_options_validate() -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {
                "provider": "anthropic",
                "name": "claude-haiku-4-5",
                "parameters": {"temperature": 0, "max_tokens": 100, "top_k": 3},
                "tool_choice": {"name": "lookup"},
                "on_truncated": "continue",
            },
        }
    )
    assert spec.model.on_truncated == "continue"
    with pytest.raises(SpecError, match="on_truncated"):
        parse_spec({"name": "a", "model": {"provider": "openai", "name": "x", "on_truncated": 1}})


def test_request_that_cannot_be_built_is_invalid_request() -> None:
    err = translate_sdk_error(TypeError("create() got an unexpected keyword 'foo'"), openai)
    assert (err.error_class, err.retryable) == ("invalid_request", False)
    assert "foo" in err.message
    other = translate_sdk_error(RuntimeError("boom"), anthropic)
    assert (other.error_class, other.retryable) == ("internal_error", False)


def test_provider_param_is_named_in_the_message() -> None:
    body = {"message": "Unrecognized request argument supplied", "param": "ignore_eos"}
    resp = httpx2.Response(400, json={"error": body}, request=httpx2.Request("POST", "http://x"))
    err = translate_sdk_error(openai.BadRequestError("400", response=resp, body=body), openai)
    assert err.error_class == "bad_request" and "(parameter ignore_eos)" in err.message


# ---------------------------------------------------------------- context overflow

# Bug 2: as the servers word it (messages quoted from their sources and responses).
OVERFLOWS = [
    # llama.cpp llama-server (tools/server): HTTP 400, type exceed_context_size_error
    (
        400,
        "request (2114 tokens) exceeds the available context size (512 tokens), try increasing it",
        "exceed_context_size_error",
    ),
    # llama-cpp-python's server
    (400, "Requested tokens (700) exceed context window of 512", "invalid_request_error"),
    # vLLM
    (
        400,
        "This model's maximum context length is 2048 tokens. However, you requested 2100 "
        "tokens (2000 in the messages, 100 in the completion).",
        "BadRequestError",
    ),
    (
        400,
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096.",
        None,
    ),
    # Ollama
    (400, "the input length exceeds the context length", None),
    # LiteLLM proxies
    (
        400,
        "litellm.ContextWindowExceededError: litellm.BadRequestError: prompt too big",
        None,
    ),
    # TGI
    (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096.", None),
    # OpenAI / Anthropic
    (400, "This model's maximum context length is 128000 tokens.", "context_length_exceeded"),
    (400, "prompt is too long: 210571 tokens > 200000 maximum", "invalid_request_error"),
]


@pytest.mark.parametrize(("status", "message", "error_type"), OVERFLOWS)
def test_context_overflow_of_every_server(status: int, message: str, error_type: str) -> None:
    assert classify_status(status, message, {}, error_type).error_class == "context_too_long"


def test_llama_cpp_overflow_body_through_the_sdk() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "request (900 tokens) exceeds the available context size (512 tokens)",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 900,
            "n_ctx": 512,
        }
    }
    resp = httpx2.Response(400, json=body, request=httpx2.Request("POST", "http://x"))
    err = translate_sdk_error(openai.BadRequestError("400", response=resp, body=body), openai)
    assert err.error_class == "context_too_long"


# ---------------------------------------------------------------- pricing


def test_cached_input_is_priced_at_the_cached_rate() -> None:
    price = Pricing(input=3.0, output=15.0, cached_input=0.3)
    usage = {"input_tokens": 1_000_000, "cached_input_tokens": 800_000, "output_tokens": 0}
    assert cost_usd(usage, price) == pytest.approx(0.2 * 3.0 + 0.8 * 0.3)
    assert cost_usd(usage, Pricing(input=3.0, output=15.0)) == pytest.approx(3.0)


def test_cache_writes_are_priced_at_the_write_rates() -> None:
    """Anthropic: a 5-minute cache write costs 1.25x input, a 1-hour one 2x; reads the
    cached rate; the rest of the input the input rate."""
    price = Pricing(input=3.0, output=15.0, cached_input=0.3)
    usage = {
        "input_tokens": 1_000_000,
        "cached_input_tokens": 500_000,
        "cache_write_input_tokens": 200_000,
        "cache_write_1h_input_tokens": 100_000,
        "output_tokens": 0,
    }
    want = 0.5 * 0.3 + 0.2 * 3.75 + 0.1 * 6.0 + 0.2 * 3.0
    assert cost_usd(usage, price) == pytest.approx(want)
    explicit = Pricing(input=3.0, output=15.0, cached_input=0.3, cache_write=4.0, cache_write_1h=5)
    assert cost_usd(usage, explicit) == pytest.approx(0.5 * 0.3 + 0.2 * 4.0 + 0.1 * 5.0 + 0.6)
    # Parts never cost more tokens than the input the provider reported.
    odd = {"input_tokens": 10, "cache_write_input_tokens": 50, "output_tokens": 0}
    assert cost_usd(odd, price) == pytest.approx(10 * 3.75 / 1e6)


# ---------------------------------------------------------------- streaming


def test_merge_name() -> None:
    # Bug 3: llama-cpp-python repeats the whole name in every chunk.
    assert merge_name(merge_name(merge_name("", "get_weather"), "get_weather"), "") == (
        "get_weather"
    )
    assert merge_name(merge_name("", "get_wea"), "ther") == "get_weather"


class _Replay:
    """A loopback HTTP server answering every POST with the next scripted SSE body."""

    def __init__(self) -> None:
        self.bodies: list[list[str]] = []
        self.requests: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                replay.requests.append(json.loads(self.rfile.read(length)))
                events = replay.bodies.pop(0)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for item in events:
                    self.wfile.write(item.encode())
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replay() -> Iterator[_Replay]:
    server = _Replay()
    yield server
    server.close()


def _sse(*chunks: dict[str, Any]) -> list[str]:
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "smol",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def _call(index: int | None, **fn: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"function": fn}
    if index is not None:
        call["index"] = index
    return call


TOOLS = [ToolSchema("get_weather", "weather", {"type": "object", "properties": {}})]


def _request(model: ModelSpec, messages: list[dict[str, Any]] | None = None) -> LLMRequest:
    return LLMRequest(
        model=model,
        system="be brief",
        messages=messages or [{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
        step=0,
        attempt=1,
    )


def _model(replay: _Replay, **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"provider": "openai-compatible", "name": "smol", "base_url": replay.url + "/v1", **extra}
    )


async def test_repeated_names_first_chunk_ids_split_arguments_no_usage(replay: _Replay) -> None:
    # llama-cpp-python: the name in every chunk, the id only in the first; arguments split
    # inside a string; no usage chunk at all.
    first = {"id": "call_1", "type": "function", **_call(0, name="get_weather", arguments="")}
    replay.bodies.append(
        _sse(
            _chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
            _chunk({"tool_calls": [_call(0, name="get_weather", arguments='{"ci')]}),
            _chunk({"tool_calls": [_call(0, name="get_weather", arguments='ty": "Par')]}),
            _chunk({"tool_calls": [_call(0, name="get_weather", arguments='is"}')]}),
            _chunk({}, "tool_calls"),
        )
    )
    response = await get_provider(_model(replay)).complete(_request(_model(replay)), print)
    assert response.message["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    ]
    # Bug 5: no usage from the server -> estimated from the request and the deltas.
    usage = response.usage
    assert usage["estimated"] is True and usage["input_tokens"] > 10
    assert usage["output_tokens"] >= len('get_weather{"city": "Paris"}') // 4


async def test_missing_index_usage_in_last_chunk_and_truncation(replay: _Replay) -> None:
    replay.bodies.append(
        _sse(
            _chunk({"content": "The weather"}),
            _chunk({"content": " in Paris is"}, "length"),
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "smol",
                "choices": [],
                "usage": {
                    "prompt_tokens": 40,
                    "completion_tokens": 6,
                    "total_tokens": 46,
                    "prompt_tokens_details": {"cached_tokens": 32},
                },
            },
        )
    )
    model = _model(replay)
    response = await get_provider(model).complete(_request(model), lambda _t: None)
    # Bug 6: finish_reason length is a truncated answer, not a silent final result.
    assert response.truncated and response.message["content"] == "The weather in Paris is"
    assert response.usage == {"input_tokens": 40, "output_tokens": 6, "cached_input_tokens": 32}


async def test_tool_call_without_index(replay: _Replay) -> None:
    replay.bodies.append(
        _sse(
            _chunk({"tool_calls": [{"id": "c9", **_call(None, name="get_weather")}]}),
            _chunk({"tool_calls": [_call(None, arguments="{}")]}),
            _chunk({}, "tool_calls"),
        )
    )
    model = _model(replay)
    response = await get_provider(model).complete(_request(model), lambda _t: None)
    assert response.message["tool_calls"] == [{"id": "c9", "name": "get_weather", "arguments": {}}]


@pytest.mark.parametrize(
    ("provider", "choice", "sent"),
    [
        ("openai-compatible", "required", "required"),
        ("openai-compatible", {"name": "get_weather"}, "required"),  # llama-server: strings only
        (
            "openai",
            {"name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        ("openai", "none", "none"),
    ],
)
async def test_tool_choice_per_provider(
    replay: _Replay, provider: str, choice: Any, sent: Any
) -> None:
    # Bug 7: tool_choice from the spec, in the form each server reads.
    replay.bodies.append(_sse(_chunk({"content": "ok"}, "stop")))
    model = ModelSpec.model_validate(
        {
            "provider": provider,
            "name": "smol",
            "base_url": replay.url + "/v1",
            "api_key_env": "REPLAY_TEST_KEY" if provider == "openai" else None,
            "tool_choice": choice,
        }
    )
    extra = [ToolSchema("other", "x", {"type": "object", "properties": {}})]
    request = _request(model)
    request = LLMRequest(**{**request.__dict__, "tools": [*TOOLS, *extra]})
    provider_obj = get_provider(model, api_key="sk-test")
    await provider_obj.complete(request, lambda _t: None)
    body = replay.requests[-1]
    assert body["tool_choice"] == sent
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == (
        ["get_weather"]
        if provider == "openai-compatible" and choice != "required"
        else ["get_weather", "other"]
    )


async def test_extra_body_reaches_the_server(replay: _Replay) -> None:
    replay.bodies.append(_sse(_chunk({"content": "ok"}, "stop")))
    model = _model(replay, parameters={"ignore_eos": True, "temperature": 0})
    await get_provider(model).complete(_request(model), lambda _t: None)
    body = replay.requests[-1]
    assert body["ignore_eos"] is True and body["temperature"] == 0


def _anthropic_events(*events: dict[str, Any]) -> list[str]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events]


async def test_anthropic_options_tool_choice_and_max_tokens(replay: _Replay) -> None:
    replay.bodies.append(
        _anthropic_events(
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "smol",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "It is sun"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens"},
                "usage": {"output_tokens": 0},
            },
            {"type": "message_stop"},
        )
    )
    model = ModelSpec.model_validate(
        {
            "provider": "anthropic",
            "name": "smol",
            "base_url": replay.url,
            "parameters": {"temperature": 0, "max_tokens": 3},
            "tool_choice": "required",
        }
    )
    response = await get_provider(model, api_key="k").complete(_request(model), lambda _t: None)
    body = replay.requests[-1]
    assert body["temperature"] == 0 and body["max_tokens"] == 3
    assert body["tool_choice"] == {"type": "any"}
    # Prompt caching (model.cache: auto): breakpoints on system, tools and the conversation.
    ephemeral = {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "be brief", "cache_control": ephemeral}]
    assert body["tools"][-1]["cache_control"] == ephemeral
    assert body["messages"][-1]["content"][-1]["cache_control"] == ephemeral
    assert response.truncated and response.message["content"] == "It is sun"
    assert response.usage["estimated"] is True  # the server reported zeros


async def test_anthropic_cache_reads_and_writes_are_journaled_apart(replay: _Replay) -> None:
    """`model.cache: 1h` marks the 1-hour cache; message_start's reads, 5-minute and 1-hour
    writes become input_tokens (their sum) and one key each, priced apart by cost_usd."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 0,
        "cache_read_input_tokens": 600,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    }
    replay.bodies.append(
        _anthropic_events(
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "smol",
                    "content": [],
                    "stop_reason": None,
                    "usage": usage,
                },
            },
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "ok"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 4},
            },
            {"type": "message_stop"},
        )
    )
    model = ModelSpec.model_validate(
        {"provider": "anthropic", "name": "smol", "base_url": replay.url, "cache": "1h"}
    )
    response = await get_provider(model, api_key="k").complete(_request(model), lambda _t: None)
    hour = {"type": "ephemeral", "ttl": "1h"}
    body = replay.requests[-1]
    assert body["system"][0]["cache_control"] == hour
    assert body["messages"][-1]["content"][-1]["cache_control"] == hour
    assert response.usage == {
        "input_tokens": 1000,
        "output_tokens": 4,
        "cached_input_tokens": 600,
        "cache_write_input_tokens": 100,
        "cache_write_1h_input_tokens": 200,
    }
    price = Pricing(input=1.0, output=0.0, cached_input=0.1)
    assert cost_usd(response.usage, price) == pytest.approx((100 + 60 + 125 + 400) / 1e6)


# ---------------------------------------------------------------- truncation in the fold


def _completed(seq: int, content: str, **data: Any) -> Event:
    message = {"role": "assistant", "content": content}
    return Event(seq, LLM_COMPLETED, 0.0, {"message": message, **data})


@pytest.mark.parametrize("policy", ["accept", "continue", "fail"])
def test_truncated_answer_policies(policy: str) -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {"provider": "scripted", "responses": [{"text": "x"}], "on_truncated": policy},
        }
    )
    events = [
        Event(1, RUN_CREATED, 0.0, {"input": "write"}),
        _completed(2, "Once upon", truncated=True),
    ]
    state = fold(events)
    atom = decide(state, spec, 0.0)
    if policy == "accept":
        assert atom == Complete(result="Once upon")
        return
    if policy == "fail":
        assert isinstance(atom, Fail) and atom.reason == "truncated"
        return
    assert atom == Reason(attempt=1, continuation=True)
    events.append(_completed(3, " a time.", continuation=True))
    state = fold(events)
    assert [m["content"] for m in state.messages] == ["write", "Once upon a time."]
    assert decide(state, spec, 0.0) == Complete(result="Once upon a time.")


def test_continuations_are_bounded() -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {
                "provider": "scripted",
                "responses": [{"text": "x"}],
                "on_truncated": "continue",
            },
        }
    )
    events = [
        Event(1, RUN_CREATED, 0.0, {"input": "write"}),
        _completed(2, "a", truncated=True),
    ]
    for i in range(MAX_CONTINUATIONS):
        events.append(_completed(3 + i, "a", truncated=True, continuation=True))
    atom = decide(fold(events), spec, 0.0)
    assert isinstance(atom, Fail) and atom.reason == "truncated"


def test_invalid_request_fails_with_its_own_reason() -> None:
    spec = parse_spec(
        {"name": "a", "model": {"provider": "scripted", "responses": [{"text": "x"}]}}
    )
    events = [
        Event(1, RUN_CREATED, 0.0, {"input": "hi"}),
        Event(2, LLM_STARTED, 0.0, {"attempt": 1}),
        Event(
            3,
            LLM_FAILED,
            0.0,
            {"class": "invalid_request", "retryable": False, "error": "TypeError: x"},
        ),
    ]
    atom = decide(fold(events), spec, 0.0)
    assert atom == Fail("invalid_request", "TypeError: x")


# ---------------------------------------------------------------- thinking


async def test_anthropic_thinking_is_kept_and_sent_back_first(replay: _Replay) -> None:
    from everruns.providers.anthropic_messages import to_anthropic_messages

    replay.bodies.append(
        _thinking_tool_use(
            "tu_1", "get_weather", '{"city": "Paris"}', "Paris: use the tool.", "sig=="
        )
    )
    model = ModelSpec.model_validate(
        {"provider": "anthropic", "name": "claude", "base_url": replay.url, "cache": "off"}
    )
    response = await get_provider(model, api_key="k").complete(_request(model), lambda _t: None)
    assert response.message["thinking"] == [
        {"type": "thinking", "thinking": "Paris: use the tool.", "signature": "sig=="}
    ]
    assert replay.requests[-1]["system"] == "be brief"  # cache: off sends it plain
    tool_result = {"role": "tool", "tool_call_id": "tu_1", "content": "sunny", "is_error": False}
    sent = to_anthropic_messages([{"role": "user", "content": "q"}, response.message, tool_result])
    assert [b["type"] for b in sent[1]["content"]] == ["thinking", "tool_use"]
    assert sent[1]["content"][0]["signature"] == "sig=="


async def test_openai_compatible_reasoning_is_journaled(replay: _Replay) -> None:
    replay.bodies.append(
        _sse(
            _chunk({"reasoning_content": "think "}),
            _chunk({"reasoning_content": "more"}),
            _chunk({"content": "42"}, "stop"),
        )
    )
    model = _model(replay)
    response = await get_provider(model).complete(_request(model), lambda _t: None)
    assert response.message["reasoning"] == "think more" and response.message["content"] == "42"


def _thinking_tool_use(
    call_id: str,
    name: str = "list_files",
    arguments: str = "{}",
    thinking: str = "Look first.",
    signature: str = "s1",
) -> list[str]:
    """An Anthropic answer: a signed thinking block, then a tool call."""
    return _anthropic_events(
        {
            "type": "message_start",
            "message": {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 20, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": thinking},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": signature},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": arguments},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    )


def _anthropic_text(text: str) -> list[str]:
    return _anthropic_events(
        {
            "type": "message_start",
            "message": {
                "id": "m2",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 30, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    )


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
async def test_reasoning_goes_back_across_a_tool_call(
    replay: _Replay, provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole run through the engine: the reasoning of a tool-call answer is journaled and
    sent back with that answer in the next request, as each API requires (Anthropic: the
    signed thinking block first; OpenAI-compatible: `reasoning_content`)."""
    from everruns.testing import arun_agent

    if provider == "anthropic":
        replay.bodies += [_thinking_tool_use("tu_1"), _anthropic_text("empty")]
        model: dict[str, Any] = {"provider": "anthropic", "name": "claude", "base_url": replay.url}
        model["api_key_env"] = "REASONING_TEST_KEY"
        monkeypatch.setenv("REASONING_TEST_KEY", "k")
    else:
        call = _call(0, name="list_files", arguments="{}")
        call["id"] = "c1"
        replay.bodies += [
            _sse(
                _chunk({"reasoning_content": "Look first."}),
                _chunk({"tool_calls": [call]}, "tool_calls"),
            ),
            _sse(_chunk({"content": "empty"}, "stop")),
        ]
        model = {"provider": "openai-compatible", "name": "smol", "base_url": replay.url + "/v1"}
    spec = {"name": "thinker", "model": model, "tools": [{"builtin": "workspace"}]}
    report = await arun_agent(spec, "What files are there?", tmp=tmp_path, timeout=60)
    assert report.status == "completed", report
    completed = [e for e in report.events if e.type == LLM_COMPLETED]
    first = completed[0].data["message"]
    second = replay.requests[1]["messages"]
    if provider == "anthropic":
        assert first["thinking"] == [
            {"type": "thinking", "thinking": "Look first.", "signature": "s1"}
        ]
        assistant = next(m for m in second if m["role"] == "assistant")
        assert [b["type"] for b in assistant["content"]] == ["thinking", "tool_use"]
        assert assistant["content"][0]["signature"] == "s1"
    else:
        assert first["reasoning"] == "Look first."
        assistant = next(m for m in second if m["role"] == "assistant")
        assert assistant["reasoning_content"] == "Look first."
        assert assistant["tool_calls"][0]["function"]["name"] == "list_files"


def test_reasoning_of_earlier_turns_is_not_sent() -> None:
    """Only the current turn's tool-call answers carry reasoning back; OpenAI itself never."""
    from everruns.providers.openai_chat import sends_reasoning, to_openai_messages

    call = {"id": "c1", "name": "list_files", "arguments": {}}
    answer = {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "r"}
    result = {"role": "tool", "tool_call_id": "c1", "content": "[]"}
    earlier = [{"role": "user", "content": "a"}, answer, result]
    now = to_openai_messages("", [*earlier, {"role": "user", "content": "b"}, answer, result], True)
    assert ["reasoning_content" in m for m in now if m["role"] == "assistant"] == [False, True]
    assert "reasoning_content" not in to_openai_messages("", earlier, False)[1]
    assert not sends_reasoning(ModelSpec.model_validate("openai:gpt-4.1"))
    assert sends_reasoning(
        ModelSpec.model_validate({"provider": "openai", "name": "m", "base_url": "http://h/v1"})
    )
    assert sends_reasoning(
        ModelSpec.model_validate(
            {"provider": "openai-compatible", "name": "m", "base_url": "http://h/v1"}
        )
    )


async def test_a_forced_tool_choice_is_released_after_the_tool_ran(
    replay: _Replay, tmp_path: Path
) -> None:
    """`tool_choice: required` forces the first step; once the tool result is in, the next
    step leaves the choice to the model (no tool_choice sent), so the run can answer."""
    from everruns.testing import arun_agent

    call = _call(0, name="list_files", arguments="{}")
    call["id"] = "c1"
    replay.bodies += [
        _sse(_chunk({"tool_calls": [call]}, "tool_calls")),
        _sse(_chunk({"content": "no files"}, "stop")),
    ]
    model = {
        "provider": "openai-compatible",
        "name": "smol",
        "base_url": replay.url + "/v1",
        "tool_choice": "required",
    }
    spec = {"name": "forced", "model": model, "tools": [{"builtin": "workspace"}]}
    report = await arun_agent(spec, "What files are there?", tmp=tmp_path, timeout=60)
    assert report.status == "completed" and report.result == "no files", report
    assert replay.requests[0]["tool_choice"] == "required"
    assert "tool_choice" not in replay.requests[1] and replay.requests[1]["tools"]
