"""Agents: immutable, versioned specs (a new version only when the spec changes).

Two ways to reuse a version. A spec saved as *the* agent (CLI, `POST /v1/agents`)
reuses only the newest version: going back to an older spec makes it the newest
again. A spec written inline by a model (`spawn_agent`) reuses any version with the
same content: a parent that spawns three different `doc-reader`s on every review
creates three versions once, not three more per review (issue 15).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from everruns.errors import StoreError
from everruns.spec import AgentSpec, parse_spec
from everruns.store.backend import Backend
from everruns.store.records import dumps
from everruns.store.schema import agents


class Agents:
    def __init__(self, db: Backend):
        self.db = db
        self._cache: dict[tuple[str, int], AgentSpec] = {}
        self._origins: dict[tuple[str, int], str] = {}

    async def save_agent(
        self, spec: AgentSpec, *, origin: str = "local", any_version: bool = False
    ) -> int:
        """Store the spec as an immutable version; reuse the newest if identical (and
        of the same origin: "local" for the CLI and in-process callers, "api" for HTTP).
        `any_version`: reuse any identical version (content hash), not only the newest."""
        if origin not in ("local", "api"):
            raise ValueError(f"origin must be 'local' or 'api', not {origin!r}")
        data = spec.to_dict()
        text = dumps(data)
        digests = _digests(data, text)
        for _ in range(50):
            try:
                version = await self._save_agent_once(spec.name, text, digests, origin, any_version)
                break
            except sa.exc.IntegrityError:
                # A concurrent writer (PostgreSQL, READ COMMITTED) inserted the same
                # version first: look at the newest version again.
                continue
        else:
            version = await self._save_agent_once(spec.name, text, digests, origin, any_version)
        self._remember(spec.name, version, spec)
        return version

    def _remember(self, name: str, version: int, spec: AgentSpec) -> None:
        _keep(self._cache, (name, version), spec)

    async def _save_agent_once(
        self, name: str, text: str, digests: tuple[str, str], origin: str, any_version: bool
    ) -> int:
        async with self.db.engine.begin() as conn:
            if any_version:
                same = (
                    await conn.execute(
                        sa.select(agents.c.version)
                        .where(
                            agents.c.name == name,
                            agents.c.digest.in_(digests),
                            agents.c.origin == origin,
                        )
                        .order_by(agents.c.version.desc())
                        .limit(1)
                    )
                ).first()
                if same is not None:
                    return int(same.version)
            latest = (
                await conn.execute(
                    sa.select(agents.c.version, agents.c.digest, agents.c.origin)
                    .where(agents.c.name == name)
                    .order_by(agents.c.version.desc())
                    .limit(1)
                )
            ).first()
            if latest is not None and latest.digest in digests and latest.origin == origin:
                return int(latest.version)
            version = 1 if latest is None else int(latest.version) + 1
            await conn.execute(
                agents.insert().values(
                    name=name,
                    version=version,
                    spec=text,
                    digest=digests[0],
                    created_at=time.time(),
                    origin=origin,
                )
            )
            return version

    async def get_agent_origin(self, name: str, version: int | None = None) -> str:
        """Where an agent version's spec came from: "local" or "api"."""
        return await _cached(self._origins, name, version, self._load_origin)

    async def _load_origin(self, name: str, version: int | None) -> str:
        query = sa.select(agents.c.origin).where(agents.c.name == name)
        if version is not None:
            query = query.where(agents.c.version == version)
        query = query.order_by(agents.c.version.desc()).limit(1)
        async with self.db.reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise StoreError(f"no agent {name!r}" + (f" version {version}" if version else ""))
        return "local" if row.origin == "local" else "api"

    async def get_agent(self, name: str, version: int | None = None) -> AgentSpec:
        """A stored agent version."""
        return await _cached(self._cache, name, version, self._load)

    async def _load(self, name: str, version: int | None) -> AgentSpec:
        query = sa.select(agents.c.spec, agents.c.version).where(agents.c.name == name)
        if version is not None:
            query = query.where(agents.c.version == version)
        query = query.order_by(agents.c.version.desc()).limit(1)
        async with self.db.reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise StoreError(f"no agent {name!r}" + (f" version {version}" if version else ""))
        return parse_spec(json.loads(row.spec), f"agent {name} v{row.version}")

    async def list_agents(self) -> list[dict[str, Any]]:
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        agents.c.name, agents.c.version, agents.c.created_at, agents.c.archived
                    ).order_by(agents.c.name, agents.c.version)
                )
            ).all()
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            latest[r.name] = {
                "name": r.name,
                "version": r.version,
                "created_at": r.created_at,
                "archived": bool(r.archived),
            }
        return list(latest.values())

    async def archive_agent(self, name: str) -> bool:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                sa.update(agents).where(agents.c.name == name).values(archived=True)
            )
        return result.rowcount > 0


def _digests(data: dict[str, Any], text: str) -> tuple[str, str]:
    """The content hash of a spec (keys sorted, so an inline spec whose mappings a model
    wrote in another order is the same spec), then the hash rows written before it
    was introduced carry (of the text as stored)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        hashlib.sha256(canonical.encode()).hexdigest(),
        hashlib.sha256(text.encode()).hexdigest(),
    )


T = TypeVar("T")


def _keep(cache: dict[tuple[str, int], T], key: tuple[str, int], value: T) -> None:
    if len(cache) >= 256:
        cache.pop(next(iter(cache)))
    cache[key] = value


async def _cached(
    cache: dict[tuple[str, int], T],
    name: str,
    version: int | None,
    load: Callable[[str, int | None], Awaitable[T]],
) -> T:
    """Agent versions are immutable: what is known of a (name, version) is kept (the newest
    version, asked for without a number, is always read)."""
    if version is not None and (name, version) in cache:
        return cache[(name, version)]
    value = await load(name, version)
    if version is not None:
        _keep(cache, (name, version), value)
    return value
