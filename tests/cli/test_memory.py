"""`everruns memory ls/rm/clear` on the database, and the HTTP routes and SDK methods
behind `--server` (`GET/DELETE /v1/agents/{name}/memory[/{key}]`), in-process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from everruns.api import ApiConfig, create_app
from everruns.cli import app
from everruns.client import ApiError, Client
from everruns.client.sync import Agents
from everruns.spec import parse_spec
from everruns.store import Store

SPEC = {"name": "keeper", "model": {"provider": "scripted", "responses": [{"text": "ok"}]}}


async def _seed(url: str) -> list[str]:
    async with await Store.open(url) as store:
        await store.save_agent(parse_spec(SPEC))
        await store.save_agent(parse_spec({**SPEC, "name": "other"}))
        ids = [(await store.remember("keeper", t, now=i))["id"] for i, t in enumerate("ab")]
        await store.remember("other", "kept elsewhere")
        return ids


def test_memory_commands_on_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    first, second = asyncio.run(_seed(url))
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        r = runner.invoke(app, ["memory", *args, "--db", url], env={"COLUMNS": "200"})
        return r.exit_code, r.stdout, r.stderr

    code, listed, _ = invoke("ls", "keeper", "--json")
    assert code == 0
    assert [(m["key"], m["value"]) for m in json.loads(listed)] == [(first, "a"), (second, "b")]
    code, table, _ = invoke("ls", "keeper")
    assert code == 0 and first in table and second in table and "value" in table
    assert invoke("rm", "keeper", first)[:2] == (0, f"forgot {first} of keeper\n")
    code, _, err = invoke("rm", "keeper", first)
    assert code == 1 and f"has no note '{first}'" in err
    code, _, err = invoke("ls", "nobody")
    assert code == 1 and "no agent 'nobody'" in err
    assert invoke("clear", "keeper")[:2] == (0, "forgot 1 notes of keeper\n")
    assert invoke("ls", "keeper")[1] == "agent keeper remembers nothing\n"
    assert json.loads(invoke("ls", "other", "--json")[1])[0]["value"] == "kept elsewhere"


def test_memory_routes_and_sync_sdk(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    first, second = asyncio.run(_seed(url))
    config = ApiConfig(database_url=url, embedded_worker=False)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as http:
        r = http.get("/v1/agents/keeper/memory")
        assert r.status_code == 200
        items = r.json()["items"]
        assert [(i["key"], i["value"]) for i in items] == [(first, "a"), (second, "b")]
        assert set(items[0]) >= {"key", "value", "updated_at"}
        r = http.delete(f"/v1/agents/keeper/memory/{first}")
        assert r.status_code == 204
        r = http.delete(f"/v1/agents/keeper/memory/{first}")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert http.get("/v1/agents/nobody/memory").status_code == 404

        client = Client()
        client.agents = Agents(http)  # the SDK's shell over the in-process app
        assert [m.key for m in client.agents.list_memory("keeper")] == [second]
        with pytest.raises(ApiError) as gone:
            client.agents.delete_memory("keeper", first)
        assert gone.value.status == 404
        client.agents.clear_memory("keeper")
        assert client.agents.list_memory("keeper") == []
        assert [m.value for m in client.agents.list_memory("other")] == ["kept elsewhere"]
        client.close()
