"""Python tools are imported relative to the spec file (its directory, or its
`python_path`), from any working directory; API specs never name directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from everruns.policy import PolicyError, check_spec
from everruns.settings import Settings
from everruns.spec import load_spec
from everruns.tools.registry import ToolSpecError, build_tools

TOOL = '''from everruns import tool


@tool(effect="pure")
def {name}() -> str:
    """Say where it lives."""
    return "{name}"
'''


def _spec(path: Path, module: str, function: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"name: t\nmodel: {{provider: scripted, responses: [{{text: hi}}]}}\n{extra}"
        f"tools: [{{python: '{module}:{function}'}}]\n"
    )
    return path


def test_tools_resolve_relative_to_the_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "pp_up_tools.py").write_text(TOOL.format(name="up_one"))
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "pp_here_tools.py").write_text(TOOL.format(name="here"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    here = load_spec(_spec(tmp_path / "agents" / "a.yaml", "pp_here_tools", "here"))
    assert here.python_path == [str((tmp_path / "agents").resolve())]
    assert list(build_tools(here)) == ["here"]
    up = load_spec(
        _spec(tmp_path / "agents" / "b.yaml", "pp_up_tools", "up_one", "python_path: [../lib]\n")
    )
    assert up.python_path == [str((tmp_path / "lib").resolve())]
    assert list(build_tools(up)) == ["up_one"]
    missing = load_spec(_spec(tmp_path / "agents" / "c.yaml", "pp_nowhere", "f"))
    with pytest.raises(ToolSpecError) as info:
        build_tools(missing)
    assert str(tmp_path / "agents") in info.value.message and os.getcwd() in info.value.message
    assert "python_path" in info.value.message


def test_api_specs_may_not_name_directories(tmp_path: Path) -> None:
    (tmp_path / "pp_api_tools.py").write_text(TOOL.format(name="api_tool"))
    spec = load_spec(_spec(tmp_path / "a.yaml", "pp_api_tools", "api_tool"))
    settings = Settings.model_validate(
        {"api_specs": {"allow_tools": ["python"], "python_modules": ["pp_api_tools"]}}
    )
    check_spec(spec, "local", settings, {})
    with pytest.raises(PolicyError) as info:
        check_spec(spec, "api", settings, {})
    assert info.value.field == "python_path"
    check_spec(spec.model_copy(update={"python_path": None}), "api", settings, {})


def test_the_api_drops_a_python_path(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from everruns.api import ApiConfig, create_app

    config = ApiConfig(database_url=f"sqlite:///{tmp_path / 'e.db'}", embedded_worker=False)
    text = "name: t\nmodel: {provider: scripted, responses: [{text: hi}]}\npython_path: [/tmp]\n"
    with TestClient(create_app(config), base_url="http://127.0.0.1") as http:
        created = http.post("/v1/agents", json={"yaml": text})
        assert created.status_code == 201, created.text
        assert "python_path" not in created.json()["spec"]
        assert "python_path" not in http.get("/v1/agents/t").json()["spec"]
