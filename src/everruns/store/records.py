"""What the store hands out (`RunRow`, `Claim`), its ids, and its JSON encoding."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, fields
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str = "run") -> str:
    """Time-sortable id: 48-bit milliseconds + 80 random bits, Crockford base32."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_B32[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def usage_totals(
    input_tokens: int, output_tokens: int, cost_usd: float, cached_input_tokens: int = 0
) -> dict[str, Any]:
    """A run's usage as the API shows it and `child.finished` carries it. The cache hit
    ratio is the share of input tokens read from a prompt cache (None before any input)."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cost_usd": round(cost_usd, 6),
        "cached_input_tokens": cached_input_tokens,
        "cache_hit_ratio": cache_hit_ratio(cached_input_tokens, input_tokens),
    }


def cache_hit_ratio(cached_input_tokens: int, input_tokens: int) -> float | None:
    return round(cached_input_tokens / input_tokens, 4) if input_tokens else None


@dataclass(frozen=True)
class Claim:
    run_id: str
    epoch: int
    crashes: int
    agent_name: str
    agent_version: int
    cancel_requested: bool


@dataclass(frozen=True)
class RunRow:
    id: str
    agent_name: str
    agent_version: int
    parent_id: str | None
    status: str
    epoch: int
    lease_owner: str | None
    lease_expires_at: float | None
    wake_at: float | None
    last_seq: int
    crashes: int
    cancel_requested: bool
    steps: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached_input_tokens: int
    input: str | None
    result: str | None
    error: dict[str, Any] | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> RunRow:
        """The row's columns by field name; only the flag and the JSON error need decoding."""
        m = row._mapping
        values = {f.name: m[f.name] for f in fields(cls)}
        values["cancel_requested"] = bool(m["cancel_requested"])
        values["error"] = json.loads(m["error"]) if m["error"] else None
        return cls(**values)

    @property
    def usage(self) -> dict[str, Any]:
        return usage_totals(
            self.input_tokens, self.output_tokens, self.cost_usd, self.cached_input_tokens
        )
