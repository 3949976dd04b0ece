"""Operator policy beats the spec: no secret exfiltration through specs, no DNS rebinding,
no cross-site requests, tool kinds and modules the operator allows, SSRF only narrowed.

Everything runs against real `everruns server` / `everruns worker` processes on loopback
and real HTTP listeners that record what they received (see docs/security.md).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet
from test_api import Server

from everruns.credentials import KeyPlan, canonical_url, plan_key, url_allowed
from everruns.settings import Settings
from everruns.spec import ModelSpec
from everruns.store import Store
from everruns.store.schema import agents
from helpers import cli, env_for, openai_stream, start_worker, stop

pytestmark = pytest.mark.timeout(180)

SECRET = "sk-live-EXFIL-0123456789"
MASTER = Fernet.generate_key().decode()


class Listener:
    """A loopback OpenAI chat-completions endpoint that answers every request with one
    streamed text and records the headers it received."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                listener.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = openai_stream("heard", 1, 1)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def auths(self) -> list[str]:
        return [h.get("authorization", "") for h in self.headers]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def listener() -> Any:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def _settings(tmp_path: Path, data: dict[str, Any], name: str = "settings.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _env(db_url: str, tmp_path: Path, settings: dict[str, Any] | None = None) -> dict[str, str]:
    return env_for(
        db_url,
        OPENAI_API_KEY=SECRET,
        EVERRUNS_MASTER_KEY=MASTER,
        EVERRUNS_SETTINGS=_settings(tmp_path, settings or {}),
    )


def _openai(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "name": "gpt-4.1", "base_url": base_url, **extra}


def _spec(name: str, model: dict[str, Any], tools: list[Any] | None = None) -> dict[str, Any]:
    return {"name": name, "model": model, "tools": tools or []}


def _problem(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = json.dumps(r.json())
    for word in words:
        assert word in detail, (word, detail)
    return detail


def _wait(base: str, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{base}/v1/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return dict(run)
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def _run_ids(base: str) -> list[str]:
    return [r["id"] for r in httpx.get(f"{base}/v1/runs").json()["items"]]


# ---------------------------------------------------------------- pure rules


def test_url_patterns_are_not_fooled() -> None:
    allowed = ["https://api.openai.com/*"]
    assert url_allowed("https://api.openai.com/v1", allowed)
    assert url_allowed("https://API.openai.com/v1/", allowed)
    for url in (
        "https://api.openai.com.evil.example/v1",
        "https://api.openai.com@evil.example/v1",
        "https://evil.example/https://api.openai.com/v1",
        "http://api.openai.com/v1",
        "https://api.openai.com:8443/v1",
        "https://api.openai.com\\@evil.example/",
        "ftp://api.openai.com/v1",
    ):
        assert not url_allowed(url, allowed), url
    assert canonical_url("https://[::1]:8/x") == "https://[::1]:8/x/"


def test_key_plans() -> None:
    bound = Settings.model_validate(
        {"credentials": {"prod": {"env": "PROD_KEY", "allow_urls": ["https://api.openai.com/*"]}}}
    )
    openai = ModelSpec.model_validate("openai:gpt-4.1")
    elsewhere = ModelSpec.model_validate(_openai("http://127.0.0.1:9/v1"))
    env = {}  # no OPENAI_BASE_URL
    assert plan_key(openai, "api", bound, {}, environ=env) == KeyPlan(
        "default", "OPENAI_API_KEY", "https://api.openai.com/v1"
    )
    # A base_url elsewhere never receives the default key, local or not.
    for origin in ("local", "api"):
        assert plan_key(elsewhere, origin, bound, {}, environ=env).source == "none"
    prod = ModelSpec.model_validate({**_openai("https://api.openai.com/v1"), "credential": "prod"})
    assert plan_key(prod, "api", bound, {}, environ=env) == KeyPlan(
        "env", "PROD_KEY", "https://api.openai.com/v1"
    )
    stored = ModelSpec.model_validate(_openai("http://127.0.0.1:9/v1", credential="mine"))
    assert plan_key(stored, "api", bound, {"mine": ["http://127.0.0.1:9/*"]}).source == "secret"
    with pytest.raises(
        ValueError, match=re.escape("'mine' may not be sent to http://127.0.0.1:9/v1")
    ):
        plan_key(stored, "api", bound, {"mine": ["http://127.0.0.1:10/*"]})
    with pytest.raises(ValueError, match="'mine' is not bound"):
        plan_key(stored, "local", bound, {})
    raw = ModelSpec.model_validate(_openai("http://127.0.0.1:9/v1", api_key_env="PROD_KEY"))
    with pytest.raises(
        ValueError, match=re.escape("PROD_KEY is bound (credential prod) to other URLs")
    ):
        plan_key(raw, "local", bound, {})
    with pytest.raises(ValueError, match="only in specs loaded from local files"):
        plan_key(raw, "api", bound, {})
    master = ModelSpec.model_validate(_openai("https://x.example/v1", api_key_env="EVERRUNS_X"))
    with pytest.raises(ValueError, match="EVERRUNS_X is one of the deployment's own"):
        plan_key(master, "local", Settings(), {})
    with pytest.raises(ValueError, match="can never be used as a credential"):
        Settings.model_validate(
            {"credentials": {"m": {"env": "EVERRUNS_MASTER_KEY", "allow_urls": ["https://*"]}}}
        )


# ---------------------------------------------------------------- 1. exfiltration


def test_spec_cannot_send_secrets_to_its_own_server(
    db_url: str, tmp_path: Path, listener: Listener
) -> None:
    env = _env(db_url, tmp_path)
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    base = server.url
    try:
        for variable in ("EVERRUNS_MASTER_KEY", "OPENAI_API_KEY", "EVERRUNS_DATABASE_URL"):
            spec = _spec("exfil", _openai(listener.url, api_key_env=variable))
            r = httpx.post(f"{base}/v1/runs", json={"spec": spec, "input": "x"})
            _problem(r, 422, "model.api_key_env", "only in specs loaded from local files")
            r = httpx.post(f"{base}/v1/agents", json={"spec": spec})
            _problem(r, 422, "model.api_key_env")
        fallback = _spec(
            "exfil",
            {
                "provider": "scripted",
                "responses": [{"text": "x"}],
                "fallbacks": [_openai(listener.url, api_key_env="OPENAI_API_KEY")],
            },
        )
        r = httpx.post(f"{base}/v1/runs", json={"spec": fallback, "input": "x"})
        _problem(r, 422, "model.fallbacks[0].api_key_env")
        assert _run_ids(base) == []
        # No credential and a base_url elsewhere: the run goes there without the key.
        r = httpx.post(
            f"{base}/v1/runs", json={"spec": _spec("plain", _openai(listener.url)), "input": "hi"}
        )
        assert r.status_code == 201, r.text
        done = _wait(base, r.json()["id"])
        assert (done["status"], done["result"]) == ("completed", "heard"), done
        assert listener.auths() == ["Bearer not-needed"]
    finally:
        server.stop()
    assert all(SECRET not in a and MASTER not in a for a in listener.auths())


def test_local_specs_keep_the_default_key_at_the_default_url_only(
    sqlite_url: str, tmp_path: Path, listener: Listener
) -> None:
    env = _env(sqlite_url, tmp_path)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(_spec("local", _openai(listener.url))))
    done = cli("run", str(path), "-i", "hi", env=env)
    assert done.returncode == 0, done.stderr
    assert listener.auths() == ["Bearer not-needed"], "OPENAI_API_KEY went to a custom base_url"
    # Raw api_key_env in a local file is the CLI user's own choice, but never EVERRUNS_*.
    path.write_text(yaml.safe_dump(_spec("local", _openai(listener.url, api_key_env="MY_KEY"))))
    done = cli("run", str(path), "-i", "hi", env={**env, "MY_KEY": "mine-123"})
    assert done.returncode == 0, done.stderr
    assert listener.auths()[-1] == "Bearer mine-123"
    master = _spec("local", _openai(listener.url, api_key_env="EVERRUNS_MASTER_KEY"))
    path.write_text(yaml.safe_dump(master))
    for command in ("validate", "run"):
        done = cli(command, str(path), env=env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "EVERRUNS_MASTER_KEY is one of the deployment's own variables" in done.stderr
    assert len(listener.headers) == 2


async def _write_agent_row(db_url: str, name: str, spec: dict[str, Any], **row: Any) -> str:
    """Bypass every API check: an agent row and a queued run written straight to the
    database (as someone with database access could)."""
    store = await Store.open(db_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                agents.insert().values(
                    name=name,
                    version=1,
                    spec=json.dumps(spec),
                    digest="x" * 64,
                    created_at=time.time(),
                    **row,
                )
            )
            return await store.runs.insert_run(conn, name, 1, "go", {})
    finally:
        await store.close()


def _final_event(db_url: str, run_id: str) -> tuple[str, dict[str, Any]]:
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT type, data FROM events WHERE run_id = :r ORDER BY seq DESC LIMIT 1"),
            {"r": run_id},
        ).one()
    engine.dispose()
    return row.type, json.loads(row.data)


def test_worker_refuses_specs_written_past_validation(
    db_url: str, tmp_path: Path, listener: Listener
) -> None:
    env = _env(db_url, tmp_path)
    cases = {
        # (spec, origin column or None for the default)
        "raw-openai": (
            _spec("raw-openai", _openai(listener.url, api_key_env="OPENAI_API_KEY")),
            None,
        ),
        "raw-master": (
            _spec("raw-master", _openai(listener.url, api_key_env="EVERRUNS_MASTER_KEY")),
            "local",
        ),
        "api-shell": (
            _spec(
                "api-shell",
                {"provider": "scripted", "responses": [{"text": "x"}]},
                [{"builtin": "shell"}],
            ),
            None,
        ),
    }
    run_ids = {
        name: asyncio.run(
            _write_agent_row(db_url, name, spec, **({"origin": origin} if origin else {}))
        )
        for name, (spec, origin) in cases.items()
    }
    worker = start_worker(env, "--lease-ttl", "2", log=tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        finals: dict[str, tuple[str, dict[str, Any]]] = {}
        while len(finals) < len(run_ids):
            assert time.monotonic() < deadline, (finals, (tmp_path / "worker.log").read_text())
            for name, run_id in run_ids.items():
                kind, data = _final_event(db_url, run_id)
                if kind in ("run.failed", "run.completed"):
                    finals[name] = (kind, data)
            time.sleep(0.2)
    finally:
        stop(worker)
    for name, (kind, data) in finals.items():
        assert kind == "run.failed", (name, data)
        assert data["reason"] == "invalid_spec", (name, data)
    assert "only in specs loaded from local files" in finals["raw-openai"][1]["error"]
    assert "EVERRUNS_MASTER_KEY is one of the deployment's own" in finals["raw-master"][1]["error"]
    assert "the shell tool is not allowed" in finals["api-shell"][1]["error"]
    assert listener.headers == [], "the worker sent a request to the spec's server"


# ---------------------------------------------------------------- 1b. bound credentials


def test_stored_and_settings_credentials_go_only_where_bound(
    sqlite_url: str, tmp_path: Path, listener: Listener
) -> None:
    other = Listener()
    settings = {
        "credentials": {"prod": {"env": "PROD_KEY", "allow_urls": [other.url + "/*"]}},
    }
    env = {**_env(sqlite_url, tmp_path, settings), "PROD_KEY": "prod-key-777"}
    stored = cli(
        "secret",
        "set",
        "team-key",
        "--value",
        "team-secret-42",
        "--allow-url",
        listener.url + "/*",
        env=env,
    )
    assert stored.returncode == 0, stored.stderr
    assert "team-secret-42" not in stored.stdout + stored.stderr
    assert cli("secret", "set", "nourl", "--value", "v", env=env).returncode == 2
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    base = server.url
    try:
        # Bound to `listener`, asked for at `other`: rejected, naming both.
        wrong = _spec("wrong", _openai(other.url, credential="team-key"))
        r = httpx.post(f"{base}/v1/runs", json={"spec": wrong, "input": "x"})
        _problem(r, 422, "model.credential", "'team-key' may not be sent to " + other.url)
        r = httpx.post(
            f"{base}/v1/runs",
            json={"spec": _spec("unbound", _openai(other.url, credential="nobody")), "input": "x"},
        )
        _problem(r, 422, "'nobody' is not bound")
        r = httpx.post(
            f"{base}/v1/runs",
            json={
                "spec": _spec("prod-wrong", _openai(listener.url, credential="prod")),
                "input": "x",
            },
        )
        _problem(r, 422, "'prod' may not be sent to " + listener.url)
        # A secret stored through the API is bound too.
        r = httpx.put(
            f"{base}/v1/secrets/api-key",
            json={"value": "api-secret-9", "allow_urls": [other.url + "/*"]},
        )
        assert r.status_code == 204, r.text
        r = httpx.post(
            f"{base}/v1/runs",
            json={"spec": _spec("api-wrong", _openai(listener.url, credential="api-key"))},
        )
        _problem(r, 422, "'api-key' may not be sent to")
        assert _run_ids(base) == []
        # Where they are bound, they work.
        for name, url, cred in (("ok1", listener.url, "team-key"), ("ok2", other.url, "prod")):
            r = httpx.post(
                f"{base}/v1/runs",
                json={"spec": _spec(name, _openai(url, credential=cred)), "input": "hi"},
            )
            assert r.status_code == 201, r.text
            done = _wait(base, r.json()["id"])
            assert done["status"] == "completed", done
    finally:
        server.stop()
        other.close()
    assert listener.auths() == ["Bearer team-secret-42"]
    assert other.auths() == ["Bearer prod-key-777"]
    # The CLI checks the same bindings (settings and stored secrets).
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(_spec("wrong", _openai(other.url, credential="team-key"))))
    done = cli("validate", str(path), env=env)
    assert done.returncode == 2 and "'team-key' may not be sent to" in done.stderr, done.stderr
    path.write_text(yaml.safe_dump(_spec("raw", _openai(listener.url, api_key_env="PROD_KEY"))))
    done = cli("validate", str(path), env=env)
    assert done.returncode == 2 and "PROD_KEY is bound (credential prod)" in done.stderr


# ---------------------------------------------------------------- 2. Host and Origin


def test_rebinding_and_cross_site_requests_are_refused(sqlite_url: str, tmp_path: Path) -> None:
    env = _env(sqlite_url, tmp_path)
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    base = server.url
    spec = _spec("probe", {"provider": "scripted", "responses": [{"text": "ok"}]})
    try:
        r = httpx.post(f"{base}/v1/agents", json={"spec": spec})
        assert r.status_code == 201, r.text
        port = server.port
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", f"localhost.evil:{port}"):
            r = httpx.post(f"{base}/v1/runs", json={"spec": spec}, headers={"Host": host})
            _problem(r, 403, "not Host")
            r = httpx.get(f"{base}/v1/runs", headers={"Host": host})
            _problem(r, 403)
        cross = (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://localhost:{port}"},  # same site, another origin
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        )
        for headers in cross:
            r = httpx.post(f"{base}/v1/runs", json={"spec": spec}, headers=headers)
            _problem(r, 403, "refused")
            r = httpx.post(f"{base}/v1/agents/probe/archive", headers=headers)  # no body
            _problem(r, 403, "refused")
            r = httpx.put(f"{base}/v1/secrets/x", json={"value": "v"}, headers=headers)
            _problem(r, 403)
        assert _run_ids(base) == []
        assert httpx.get(f"{base}/v1/agents/probe").json()["archived"] is False
        assert httpx.get(f"{base}/v1/secrets").json() == []
        # Reading is fine cross-site (the answer is not readable without CORS anyway).
        assert httpx.get(f"{base}/v1/runs", headers={"Origin": "http://evil.example"}).is_success
        # Same origin (the web UI), loopback names and header-less clients (CLI, SDK) work.
        for headers in (
            {"Origin": base, "Sec-Fetch-Site": "same-origin"},
            {"Host": f"localhost:{port}"},
            {},
        ):
            r = httpx.post(f"{base}/v1/runs", json={"spec": spec, "input": "x"}, headers=headers)
            assert r.status_code == 201, r.text
        r = httpx.post(f"{base}/v1/agents/probe/archive", headers={"Origin": base})
        assert r.status_code == 200, r.text
        assert len(_run_ids(base)) == 3
    finally:
        server.stop()


def test_cors_origin_needs_auth_and_is_the_only_exception(sqlite_url: str, tmp_path: Path) -> None:
    env = _env(sqlite_url, tmp_path)
    refused = cli("server", "--cors-origin", "https://app.example", env=env, timeout=30)
    assert refused.returncode == 2 and "--cors-origin needs --auth" in refused.stderr
    token = cli("token", "create", "--name", "t", env=env).stdout.strip()
    server = Server(
        env, "--auth", "--cors-origin", "https://app.example", log=tmp_path / "server.log"
    )
    base = server.url
    auth = {"Authorization": f"Bearer {token}"}
    spec = _spec("cors", {"provider": "scripted", "responses": [{"text": "ok"}]})
    try:
        r = httpx.post(
            f"{base}/v1/runs",
            json={"spec": spec},
            headers={**auth, "Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert r.status_code == 201, r.text
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = httpx.post(
            f"{base}/v1/runs",
            json={"spec": spec},
            headers={**auth, "Origin": "https://other.example"},
        )
        _problem(r, 403, "cross-origin request from 'https://other.example' refused")
        # With auth on, other Host names are served (the token is the check).
        r = httpx.get(f"{base}/v1/runs", headers={**auth, "Host": "api.example"})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 1
    finally:
        server.stop()


# ---------------------------------------------------------------- 3. tool policy and SSRF


def test_api_specs_get_only_the_tools_the_operator_allows(sqlite_url: str, tmp_path: Path) -> None:
    scripted = {"provider": "scripted", "responses": [{"text": "ok"}]}
    stdio = {"mcp": {"command": ["sh", "-c", "id"]}}
    denied = [
        ([{"builtin": "shell"}], "tools[0].builtin", "the shell tool is not allowed"),
        (["ledgertools:idem_record"], "tools[0].python", "Python tools are not allowed"),
        ([stdio], "tools[0].mcp", "stdio MCP servers"),
        (["os:system"], "tools[0].python", "Python tools are not allowed"),
        (
            [{"builtin": "web_fetch", "options": {"allow_private": True}}],
            "tools[0]",
            "a spec can only narrow the SSRF guard",
        ),
    ]
    env = _env(sqlite_url, tmp_path, {})  # the default policy
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        for tools, field, message in denied:
            r = httpx.post(f"{server.url}/v1/runs", json={"spec": _spec("t", scripted, tools)})
            _problem(r, 422, field, message)
            r = httpx.post(f"{server.url}/v1/agents", json={"spec": _spec("t", scripted, tools)})
            _problem(r, 422, field)
        # A python model is Python code on the worker too.
        python_model = {"provider": "python", "function": "ledgertools:respond"}
        r = httpx.post(f"{server.url}/v1/runs", json={"spec": _spec("t", python_model, [])})
        _problem(r, 422, "model.function", "`provider: python` model is not allowed")
        assert _run_ids(server.url) == []
        narrowed = [{"builtin": "web_fetch", "options": {"allow_private": False}}]
        r = httpx.post(f"{server.url}/v1/runs", json={"spec": _spec("t", scripted, narrowed)})
        assert r.status_code == 201, r.text
    finally:
        server.stop()

    allowing = {
        "allow_private_networks": True,
        "api_specs": {
            "allow_tools": ["shell", "python", "mcp_stdio"],
            "python_modules": ["ledgertools", "os", "builtins"],
        },
    }
    env = _env(sqlite_url, tmp_path, allowing)
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server2.log")
    try:
        allowed = ([{"builtin": "shell"}], ["ledgertools:idem_record"], [stdio], denied[4][0])
        for tools in allowed:
            r = httpx.post(f"{server.url}/v1/agents", json={"spec": _spec("t", scripted, tools)})
            assert r.status_code == 201, r.text
        # Listed modules still give only @tool functions, never arbitrary callables.
        for path in ("os:system", "builtins:eval"):
            r = httpx.post(f"{server.url}/v1/agents", json={"spec": _spec("t", scripted, [path])})
            _problem(r, 422, "tools[0].python", "not a function decorated with @everruns.tool")
        r = httpx.post(
            f"{server.url}/v1/agents", json={"spec": _spec("t", scripted, ["wstools:nap"])}
        )
        _problem(r, 422, "module 'wstools' is not one the operator allows")
    finally:
        server.stop()

    # Local CLI specs may use every kind, but never an arbitrary callable.
    env = _env(sqlite_url, tmp_path, {})
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(_spec("t", scripted, [{"builtin": "shell"}])))
    done = cli("validate", str(path), env=env)
    assert done.returncode == 0, done.stderr
    for tool in ("os:system", "builtins:eval"):
        path.write_text(yaml.safe_dump(_spec("t", scripted, [tool])))
        done = cli("validate", str(path), env=env)
        assert done.returncode == 2, done.stdout
        assert "not a function decorated with @everruns.tool" in done.stderr
    path.write_text(yaml.safe_dump(_spec("t", scripted, denied[4][0])))
    done = cli("validate", str(path), env=env)
    assert done.returncode == 2 and "only narrow the SSRF guard" in done.stderr, done.stderr
