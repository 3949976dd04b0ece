"""What the store hands out (`RunRow`, `Claim`), its ids, and its JSON encoding."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from everruns.core.budget import Ledger


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
    verdict: str | None = None  # the grader's (an agent with `outcome:`)
    progress: dict[str, Any] | None = None  # the latest journaled ctx.progress() of a tool
    unpriced_calls: int = 0  # own calls of a model without a price
    limits: dict[str, Any] | None = None  # overrides of the spec's limits (`everruns budget`)
    tree: Ledger | None = None  # own + all descendants, when the store summed it

    @classmethod
    def from_row(cls, row: Any) -> RunRow:
        """The row's columns by field name; only the flag and the JSON error need decoding."""
        m = row._mapping
        values = {f.name: m[f.name] for f in fields(cls) if f.name in m}
        values["cancel_requested"] = bool(m["cancel_requested"])
        values["error"] = json.loads(m["error"]) if m["error"] else None
        values["unpriced_calls"] = m.get("unpriced_calls") or 0
        values["limits"] = json.loads(m["limits"]) if m.get("limits") else None
        values["progress"] = json.loads(m["progress"]) if m.get("progress") else None
        return cls(**values)

    @property
    def ledger(self) -> Ledger:
        """What this run's own calls spent (the projection of its own journal)."""
        return Ledger(
            self.input_tokens,
            self.output_tokens,
            self.cost_usd,
            self.unpriced_calls,
            self.cached_input_tokens,
        )

    @property
    def usage(self) -> dict[str, Any]:
        return self.ledger.as_usage()

    @property
    def tree_usage(self) -> dict[str, Any]:
        """Own + all descendants (own alone when the tree was not summed: no children)."""
        return (self.tree or self.ledger).as_usage()

    def with_tree(self, tree: Ledger | None) -> RunRow:
        return replace(self, tree=tree)
