"""The committed OpenAPI document, and schemathesis against a live server.

`docs/openapi.json` must be what the code serves (`make openapi` regenerates it).
Schemathesis (its CLI, as a subprocess) then generates requests for every operation
from that committed document, with a fixed seed and a bounded number of examples,
against a real `everruns server` (embedded worker) whose database already holds
runs in several states; run ids, agent names and tool call ids are drawn from those
most of the time, so the run routes are exercised beyond 404s. Any 5xx fails, and so
does any response the document does not describe (status, content type, headers, body).
"""

from __future__ import annotations

import difflib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from test_api import Server

from everruns.api.openapi import document
from helpers import env_for, stop

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.json"
ST = Path(sys.executable).parent / "st"


def test_committed_openapi_document_is_current() -> None:
    committed = json.dumps(json.loads(SPEC.read_text()), indent=1, sort_keys=True)
    served = json.dumps(document(), indent=1, sort_keys=True)
    if committed != served:
        diff = "\n".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(),
                    served.splitlines(),
                    "docs/openapi.json",
                    "everruns.api.openapi.document()",
                    lineterm="",
                )
            )[:60]
        )
        pytest.fail(f"docs/openapi.json is stale: run `make openapi` and commit it\n{diff}")


def _seed_runs(base: str) -> dict[str, list[str]]:
    """Runs in several states for the fuzzer to poke at: completed, waiting for an
    approval, running (a long scripted delay) and paused."""
    http = httpx.Client(base_url=base, timeout=30)
    approvals = {
        "name": "fuzz-approval",
        "model": {
            "provider": "scripted",
            "responses": [
                {"tool_calls": [{"name": "sleep", "arguments": {"seconds": 1}}]},
                {"text": "approved"},
            ],
        },
        "approvals": {"require_for": ["sleep"]},
    }
    quick = {"name": "fuzz-quick", "model": {"provider": "scripted", "responses": [{"text": "ok"}]}}
    slow = {
        "name": "fuzz-slow",
        "model": {"provider": "scripted", "responses": [{"text": "slow", "delay": 600}]},
    }
    ids = []
    for spec in (approvals, approvals, quick, slow, slow):
        r = http.post("/v1/runs", json={"spec": spec, "input": "fuzz"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    deadline = time.monotonic() + 30
    while [http.get(f"/v1/runs/{i}").json()["status"] for i in ids] != [
        "waiting",
        "waiting",
        "completed",
        "running",
        "running",
    ]:
        assert time.monotonic() < deadline, "the seed runs did not settle"
        time.sleep(0.2)
    assert http.post(f"/v1/runs/{ids[4]}/pause").status_code == 200
    r = http.post("/v1/schedules", json={"agent": "fuzz-quick", "schedule": "every 1h"})
    assert r.status_code in (200, 201), r.text
    http.close()
    return {
        "runs": ids,
        "names": ["fuzz-approval", "fuzz-quick", "fuzz-slow", "OPENAI_API_KEY"],
        "calls": ["call_1_1"],
    }


def _config(path: Path, values: dict[str, list[str]]) -> Path:
    path.write_text(
        "".join(
            f"[dictionaries.{name}]\nvalues = {json.dumps(items)}\n\n"
            for name, items in values.items()
        )
        + "[parameters]\n"
        + '"path.run_id" = { dictionary = "runs", probability = 0.8 }\n'
        + '"path.name" = { dictionary = "names", probability = 0.5 }\n'
        + '"path.agent" = { dictionary = "names", probability = 0.5 }\n'
        + '"path.call_id" = { dictionary = "calls", probability = 0.8 }\n'
        + '"body.agent" = { dictionary = "names", probability = 0.5 }\n'
    )
    return path


@pytest.mark.timeout(120)
def test_schemathesis_finds_no_server_errors(db_url: str, tmp_path: Path) -> None:
    env = env_for(db_url, EVERRUNS_MASTER_KEY=Fernet.generate_key().decode())
    log = tmp_path / "server.log"
    server = Server(env, "--lease-ttl", "5", log=log)
    try:
        config = _config(tmp_path / "schemathesis.toml", _seed_runs(server.url))
        result = subprocess.run(
            [
                str(ST),
                "--config-file",
                str(config),
                "run",
                str(SPEC),
                "--url",
                server.url,
                "--checks",
                # No 5xx, and every response as documented: its status, content type,
                # headers and body schema (problem+json for every error).
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_headers_conformance,response_schema_conformance",
                "--seed",
                "1",
                "--max-examples",
                "20",
                "--exclude-path-regex",
                "/events/stream$",  # never ends while a run lives
                "--generation-database",
                "none",
                "--request-timeout",
                "20",
                "--no-color",
            ],
            cwd=tmp_path,  # no schemathesis.toml or caches picked up from the repository
            capture_output=True,
            text=True,
            timeout=100,
        )
        alive = server.proc.poll() is None
    finally:
        stop(server.proc, signal.SIGKILL)  # runs sleeping 600 s would hold a graceful stop
    (tmp_path / "schemathesis.txt").write_text(result.stdout + result.stderr)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "generated" in result.stdout and "Seed: 1" in result.stdout, report
    assert alive, "the server died under the fuzzer"
    output = log.read_text()
    assert "Traceback" not in output, output[-4000:]


def test_every_operation_documents_its_problems(tmp_path: Path) -> None:
    doc = document()
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "503" in responses, (method, path)
            if "{" in path:
                for status in ("404", "409", "422"):
                    content = responses[status]["content"]
                    assert content == {"application/problem+json": {"schema": problem}}
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(responses), (method, path)
    assert "HTTPValidationError" not in json.dumps(doc)


def test_405_names_the_allowed_methods(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from everruns.api import ApiConfig, create_app

    config = ApiConfig(database_url=f"sqlite:///{tmp_path / 'e.db'}", embedded_worker=False)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as http:
        r = http.delete("/v1/runs")
        assert r.status_code == 405
        assert r.headers["content-type"] == "application/problem+json"
        assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
