"""Access: API tokens (only their sha256 is stored) and encrypted secrets."""

from __future__ import annotations

import hashlib
import json
import secrets as secrets_module
import time
from typing import Any

import sqlalchemy as sa

from everruns.store.backend import Backend
from everruns.store.records import dumps, new_id
from everruns.store.schema import api_tokens, secrets


def _token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class Access:
    def __init__(self, db: Backend):
        self.db = db

    async def create_token(self, name: str) -> tuple[str, str]:
        """A new API token: (id, plaintext). Only its sha256 is stored."""
        token_id = new_id("tok")
        plaintext = "evr_" + secrets_module.token_urlsafe(32)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                api_tokens.insert().values(
                    id=token_id,
                    name=name,
                    token_hash=_token_hash(plaintext),
                    created_at=time.time(),
                )
            )
        return token_id, plaintext

    async def verify_token(self, plaintext: str) -> str | None:
        """The token's name if it is valid and not revoked."""
        async with self.db.reads.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_tokens.c.name).where(
                        api_tokens.c.token_hash == _token_hash(plaintext),
                        api_tokens.c.revoked.is_(False),
                    )
                )
            ).first()
        return None if row is None else str(row.name)

    async def list_tokens(self) -> list[dict[str, Any]]:
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at))
            ).all()
        return [
            {"id": r.id, "name": r.name, "created_at": r.created_at, "revoked": bool(r.revoked)}
            for r in rows
        ]

    async def revoke_token(self, token_id: str) -> bool:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_tokens).where(api_tokens.c.id == token_id).values(revoked=True)
            )
        return result.rowcount == 1

    async def put_secret(
        self, name: str, ciphertext: str, allow_urls: list[str] | None = None
    ) -> None:
        """Store (replace) a secret and the URL patterns it may be sent to."""
        async with self.db.engine.begin() as conn:
            await conn.execute(sa.delete(secrets).where(secrets.c.name == name))
            await conn.execute(
                secrets.insert().values(
                    name=name,
                    ciphertext=ciphertext,
                    updated_at=time.time(),
                    allow_urls=dumps(list(allow_urls or [])),
                )
            )

    async def secret_bindings(self) -> dict[str, list[str]]:
        """Every stored secret's name and the URL patterns it may be sent to."""
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(sa.select(secrets.c.name, secrets.c.allow_urls))).all()
        return {r.name: [str(u) for u in json.loads(r.allow_urls or "[]")] for r in rows}

    async def get_secret(self, name: str) -> str | None:
        async with self.db.reads.connect() as conn:
            row = (
                await conn.execute(sa.select(secrets.c.ciphertext).where(secrets.c.name == name))
            ).first()
        return None if row is None else str(row.ciphertext)

    async def list_secrets(self) -> list[str]:
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(sa.select(secrets.c.name).order_by(secrets.c.name))).all()
        return [r.name for r in rows]
