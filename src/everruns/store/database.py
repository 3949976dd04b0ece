"""Database URLs, engines and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from everruns.errors import StoreError

if TYPE_CHECKING:
    from everruns.store.writer import JournalWriter

DEFAULT_SQLITE_PATH = Path(".everruns") / "everruns.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x65766572  # "ever"
PG_CONNECT_TIMEOUT = 10  # seconds: an unreachable host is an error, not a hang


class DatabaseURLError(ValueError):
    """A database URL that names no database we can use (a usage error)."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached or opened; the message names the cause and the fix."""


class DatabaseMissing(DatabaseUnavailable):
    """A command that only reads found no SQLite file (it never creates one)."""

    def __init__(self, path: str):
        super().__init__(f"no database at {path}; run `everruns start` or pass --db")
        self.path = path


def resolve_url(url: str | None = None) -> str:
    """The database URL from an argument, `EVERRUNS_DATABASE_URL`, or the default file."""
    url = url or os.environ.get("EVERRUNS_DATABASE_URL")
    if not url:
        return f"sqlite:///{DEFAULT_SQLITE_PATH}"
    if "://" not in url:  # a bare path means a SQLite file
        return f"sqlite:///{url}"
    return url


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ValueError, sa.exc.ArgumentError):
        raise DatabaseURLError(
            f"{url!r} is not a database URL: use sqlite:///path or postgresql://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        # sqlite://relative.db: the name went into the host part and no file is named.
        path = parsed.host + (f"/{parsed.database}" if parsed.database else "")
        raise DatabaseURLError(
            f"{url!r} names no file: write sqlite:///{path} (three slashes) for a "
            f"relative path, sqlite:////abs/path.db (four) for an absolute one"
        )
    return parsed


def display_url(url: str) -> str:
    """The URL as shown in messages: never the password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ValueError, sa.exc.ArgumentError):
        return url


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def check_url(url: str, *, create: bool) -> None:
    """Refuse a URL we cannot use before touching anything; a reading command
    (`create=False`) gets an error for a missing SQLite file instead of a new empty one."""
    _driver_urls(url)
    path = sqlite_path(url)
    if path is not None and not create and not Path(path).is_file():
        raise DatabaseMissing(path)


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """One or two lines for a database that could not be opened: the cause and the fix."""
    shown = display_url(url)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):
            reason = "a file is in the way of its directory"
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return DatabaseUnavailable(
            f"cannot create the database {shown}: {reason}{where}; "
            "pass --db with a path in a writable directory"
        )
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    lowered = text.lower()
    if "does not exist" in lowered and "database" in lowered:
        fix = "create it (e.g. `createdb NAME`) or pass another --db"
    elif "password" in lowered or "role" in lowered or "authentication" in lowered:
        fix = "check the user and password in --db"
    elif "unable to open database file" in lowered:
        fix = "pass --db with a path in a writable directory"
    elif "not a database" in lowered:
        fix = "the file is not an everruns database; pass another --db"
    else:
        fix = "check that the database server is running and --db is right"
    reason = text.removeprefix("connection failed: ").split(" Is the server running")[0]
    return DatabaseUnavailable(f"cannot open the database {shown}: {reason}; {fix}")


def _driver_urls(url: str) -> tuple[str, str]:
    """(async URL, sync URL) for a user-facing URL."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (
            str(parsed.set(drivername="sqlite+aiosqlite")),
            str(parsed.set(drivername="sqlite+pysqlite")),
        )
    if backend in ("postgresql", "postgres"):
        pg = parsed.set(drivername="postgresql+psycopg")
        return pg.render_as_string(hide_password=False), pg.render_as_string(hide_password=False)
    raise DatabaseURLError(
        f"unsupported database URL {url!r}: use sqlite:///path or postgresql://user@host/db"
    )


def is_sqlite(url: str) -> bool:
    return _parse(url).get_backend_name() == "sqlite"


def _sqlite_setup(engine: sa.Engine) -> None:
    """Transactions take the write lock up front (BEGIN IMMEDIATE), so a claim or an
    append never fails half-way on a lock upgrade; WAL lets readers proceed."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # Reads (see `readonly`) take no lock at all: WAL readers never block the writer.
        readonly = conn.get_execution_options().get("everruns_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    async_url, _ = _driver_urls(url)
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(async_url, connect_args={"timeout": 60})
        _sqlite_setup(engine.sync_engine)
        return engine
    # More callers than connections wait for one (back-pressure), never fail on a timeout.
    return create_async_engine(
        async_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=3600,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT},
    )


def readonly(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) for transactions that only read: on SQLite they begin
    deferred, so status polls, event feeds and claim checks never take the write lock."""
    return engine.execution_options(everruns_readonly=True)


def create_writer(url: str) -> JournalWriter | None:
    """The hot-path journal writer for this database (None: in-memory SQLite)."""
    from everruns.store.writer import PostgresJournalWriter, SQLiteJournalWriter

    parsed = make_url(url)
    if is_sqlite(url):
        if not parsed.database or parsed.database == ":memory:":
            return None
        return SQLiteJournalWriter(parsed.database)
    return PostgresJournalWriter(
        parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    )


_UPGRADE_LOCK = threading.Lock()  # Alembic's migration context is process-global


def _upgrade_sync(url: str) -> None:
    with _UPGRADE_LOCK:
        _upgrade_locked(url)


def _upgrade_locked(url: str) -> None:
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    _, sync_url = _driver_urls(url)
    if is_sqlite(url):
        engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
        _sqlite_setup(engine)
    else:
        engine = sa.create_engine(
            sync_url,
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT},
        )
    try:
        with engine.begin() as conn:
            if not is_sqlite(url):
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


async def upgrade(url: str) -> None:
    """Bring the schema to the newest migration (safe to call from many processes)."""
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_upgrade_sync, url)


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head
