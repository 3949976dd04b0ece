"""Agent spec validation: bad specs are rejected with the file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from everruns.spec import AgentSpec, SpecError, load_spec, parse_duration, parse_spec


def _scripted(**extra: object) -> dict:
    return {"name": "a", "model": {"provider": "scripted", "responses": [{"text": "hi"}]}, **extra}


def test_model_string_form() -> None:
    spec = parse_spec({"name": "a", "model": "openai:gpt-4.1"})
    assert spec.model.provider == "openai"
    assert spec.model.name == "gpt-4.1"


def test_model_object_with_fallbacks() -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {
                "provider": "anthropic",
                "name": "claude-sonnet-4-5",
                "fallbacks": [
                    "openai:gpt-4.1",
                    {
                        "provider": "openai-compatible",
                        "name": "local",
                        "base_url": "http://localhost:8080/v1",
                    },
                ],
            },
        }
    )
    assert [f.label for f in spec.model.fallbacks] == ["openai:gpt-4.1", "openai-compatible:local"]


def test_limits_durations() -> None:
    spec = parse_spec(_scripted(limits={"deadline": "6h", "max_steps": 3}))
    assert spec.limits.deadline == 6 * 3600
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2d") == 172800
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        (_scripted(limits={"max_steps": "many"}), "limits.max_steps", "integer"),
        (_scripted(limits={"deadline": "forever"}), "limits.deadline", "not a duration"),
        ({"name": "a", "model": "gpt4"}, "model", "provider:model"),
        ({"name": "a", "model": {"provider": "scripted"}}, "model", "responses"),
        (_scripted(tools=[{"python": "nomodule"}]), "tools[0]", "package.module:function"),
        (_scripted(tools=[{"python": "m:f", "effect": "maybe"}]), "tools[0].effect", "pure"),
        (_scripted(temperature=1), "temperature", "Extra inputs"),
        ({"model": "openai:gpt-4.1"}, "name", "required"),
    ],
)
def test_bad_spec_names_field(data: dict, field: str, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "agent.yaml")
    fields = [f for f, _ in info.value.problems]
    assert field in fields, info.value.problems
    assert needle in str(info.value)
    assert str(info.value).startswith("agent.yaml: ")


def test_load_spec_reports_yaml_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\nmodel: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_load_spec_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_round_trips() -> None:
    spec = parse_spec(_scripted(limits={"deadline": "1h"}))
    again = AgentSpec.model_validate(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize(
    ("yaml_fields", "field", "words"),
    [
        ("limits: {deadline: .nan}", "limits.deadline", "finite"),
        ("limits: {deadline: .inf}", "limits.deadline", "finite"),
        ("limits: {deadline: -5}", "limits.deadline", "negative"),
        ("limits: {deadline: -5m}", "limits.deadline", "not a duration"),
        ("limits: {max_cost_usd: .inf}", "limits.max_cost_usd", "finite"),
        ("limits: {max_cost_usd: .nan}", "limits.max_cost_usd", "finite"),
        ("limits: {max_cost_usd: -1}", "limits.max_cost_usd", "greater than 0"),
        ("limits: {max_steps: .inf}", "limits.max_steps", "finite"),
        ("limits: {max_tokens: -1}", "limits.max_tokens", "greater than or equal to 1"),
        ("retry: {max_backoff: -.inf}", "retry.max_backoff", "finite"),
        ("retry: {multiplier: .nan}", "retry.multiplier", "finite"),
        ("tools: [{builtin: sleep, timeout: .inf}]", "tools[0].timeout", "finite"),
    ],
)
def test_limits_and_durations_refuse_nan_infinity_and_negatives(
    tmp_path: Path, yaml_fields: str, field: str, words: str
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        f"name: x\nmodel: {{provider: scripted, responses: [{{text: hi}}]}}\n{yaml_fields}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}: {field}: " in str(info.value) and words in str(info.value), str(info.value)
