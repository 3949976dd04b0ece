"""The pytest plugin (entry point `everruns` in `pytest11`): fixtures for agent tests.

Fixtures:
- `everruns_db`: the database URL the fixtures use: `--everruns-db URL` or
  EVERRUNS_TESTING_DB (e.g. a PostgreSQL URL); None means a fresh SQLite file per run.
- `crash_matrix`: `crash_matrix(spec, input, **options) -> CrashReport`, with the
  database and a work directory under the test's tmp_path filled in.
- `record_run`: `record_run(spec, input) -> Path`, runs the agent and exports its
  journal to a file under tmp_path (what `everruns export RUN` writes).
- `replay_run`: `replay_run(recording, spec, **options) -> ReplayReport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from everruns.testing import matrix
from everruns.testing.replay import ReplayReport, record, replay


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("everruns")
    group.addoption(
        "--everruns-db",
        default=None,
        help="database URL for everruns.testing fixtures (default: SQLite under tmp_path)",
    )


@pytest.fixture
def everruns_db(request: pytest.FixtureRequest) -> str | None:
    """The database URL of the fixtures, or None for SQLite files under tmp_path."""
    value = request.config.getoption("--everruns-db") or os.environ.get("EVERRUNS_TESTING_DB")
    return str(value) if value else None


@pytest.fixture
def crash_matrix(everruns_db: str | None, tmp_path: Path) -> Callable[..., matrix.CrashReport]:
    """`crash_matrix(spec, input, **options)`; see everruns.testing.crash_matrix."""

    def run(spec: Any, input: str | None, **options: Any) -> matrix.CrashReport:
        options.setdefault("db", everruns_db)
        options.setdefault("tmp", tmp_path / "crash-matrix")
        return matrix.crash_matrix(spec, input, **options)

    return run


@pytest.fixture
def record_run(everruns_db: str | None, tmp_path: Path) -> Callable[..., Path]:
    """`record_run(spec, input, name="run") -> Path`: run the agent, export its journal."""

    def run(spec: Any, input: str | None, name: str = "run", **options: Any) -> Path:
        options.setdefault("db", everruns_db)
        options.setdefault("tmp", tmp_path / f"record-{name}")
        return record(spec, input, tmp_path / f"{name}.jsonl", **options)

    return run


@pytest.fixture
def replay_run(everruns_db: str | None, tmp_path: Path) -> Callable[..., ReplayReport]:
    """`replay_run(recording, spec=None, live=False, tools=None) -> ReplayReport`."""
    count = 0

    def run(recording: Any, spec: Any = None, **options: Any) -> ReplayReport:
        nonlocal count
        count += 1
        options.setdefault("db", everruns_db)
        options.setdefault("tmp", tmp_path / f"replay-{count}")
        return replay(recording, spec, **options)

    return run
