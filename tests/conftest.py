"""Shared fixtures: real SQLite files and real PostgreSQL databases (one per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from everruns.store import Store

PG_ADMIN_URL = os.environ.get(
    "EVERRUNS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("EVERRUNS_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return str(exc)


_PG_PROBLEM = _pg_available()


def _need_pg() -> None:
    if _PG_PROBLEM is None:
        return
    if REQUIRE_PG:
        pytest.fail(f"PostgreSQL is required here but unreachable at {PG_ADMIN_URL}: {_PG_PROBLEM}")
    pytest.skip(
        f"PostgreSQL unreachable at {PG_ADMIN_URL} (set EVERRUNS_REQUIRE_POSTGRES=1 to fail)"
    )


def _base(url: str) -> str:
    return url.rsplit("/", 1)[0]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    _need_pg()
    with new_pg_database() as url:
        yield url


@contextmanager
def new_pg_database() -> Iterator[str]:
    """Create an empty PostgreSQL database; drop it on exit."""
    name = f"everruns_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{_base(PG_ADMIN_URL)}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'everruns.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'everruns.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Numbers some tests report (`user_properties`, e.g. the use-case examples'), printed
    at the end; reports carry them from xdist workers too."""
    sections: dict[str, list[str]] = {}
    for kind in ("passed", "failed"):
        for report in terminalreporter.stats.get(kind, []):
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", []):
                if name == "use-case numbers":
                    sections.setdefault(name, []).append(str(value))
    for name, lines in sections.items():
        terminalreporter.section(name)
        for line in lines:
            terminalreporter.write_line(line)
