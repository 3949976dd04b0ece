"""Budgets, pure: a run's effective limits, the ledger of a run or a run tree, and the
check of a limit against a ledger.

A run's limits are its spec's `limits` overridden by its latest `limits.changed`
(`everruns budget`). A ledger is what a run or a tree spent: tokens, cost, and how many
calls had no price (then the cost is not known). A run's own ledger is the fold of its
own journal (the runs row projects it); a tree's is the sum of its runs' own ledgers, so
each charge is in exactly one journal and no sum counts it twice. The engine reads those
sums from the store and asks `breach` before every LLM call (engine/budgets.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from everruns.spec import Limits

# The limits a tree shares (a parent's bound the sum of it and all its descendants).
TREE_LIMITS = ("max_cost_usd", "max_tokens")
# What `everruns budget` may change.
LIMIT_KEYS = ("max_cost_usd", "max_tokens", "max_steps", "max_llm_calls", "deadline")


@dataclass(frozen=True)
class Ledger:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # calls of a model without a price: the cost is a lower bound

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_known(self) -> bool:
        return self.unpriced_calls == 0

    def __add__(self, other: Ledger) -> Ledger:
        return Ledger(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
            self.unpriced_calls + other.unpriced_calls,
        )

    def as_usage(self) -> dict[str, Any]:
        """The API's usage object: `cost_usd` is null when not known (never a silent 0)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.cost_known else None,
            "cost_known": self.cost_known,
        }


def charge(usage: Mapping[str, Any] | None) -> Ledger:
    """The ledger of one journaled usage (`llm.completed`, `llm.failed`, `llm.charged`,
    `context.compacted`)."""
    if not usage:
        return Ledger()
    return Ledger(
        int(usage.get("input_tokens", 0)),
        int(usage.get("output_tokens", 0)),
        float(usage.get("cost_usd", 0.0)),
        1 if usage.get("cost_known") is False else 0,
    )


def usage_ledger(usage: Mapping[str, Any] | None) -> Ledger:
    """A usage object as `as_usage` (or `child.finished`) wrote it, back into a ledger."""
    if not usage:
        return Ledger()
    known = usage.get("cost_known", True)
    return Ledger(
        int(usage.get("input_tokens", 0)),
        int(usage.get("output_tokens", 0)),
        float(usage.get("cost_usd") or 0.0),
        0 if known else max(1, int(usage.get("unpriced_calls", 1))),
    )


def effective_limits(limits: Limits, overrides: Mapping[str, Any] | None) -> Limits:
    """The spec's limits with the run's `limits.changed` overrides applied."""
    if not overrides:
        return limits
    return limits.model_copy(update={k: v for k, v in overrides.items() if k in LIMIT_KEYS})


def breach(limits: Limits, spent: Ledger) -> str | None:
    """Which tree limit (`max_tokens`, `max_cost_usd`) `spent` reached, in words; None."""
    if limits.max_tokens is not None and spent.total_tokens >= limits.max_tokens:
        return f"max_tokens={limits.max_tokens} reached ({spent.total_tokens} used)"
    if limits.max_cost_usd is not None and spent.cost_usd >= limits.max_cost_usd:
        return f"max_cost_usd={limits.max_cost_usd:g} reached (${spent.cost_usd:.4f} spent)"
    return None


def has_tree_limit(limits: Limits) -> bool:
    return any(getattr(limits, key) is not None for key in TREE_LIMITS)


def check_change(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The limits `everruns budget` sets, validated like the spec's (ValueError: which)."""
    unknown = sorted(set(changes) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"not a limit: {', '.join(unknown)} (limits: {', '.join(LIMIT_KEYS)})")
    if not changes:
        raise ValueError("give at least one limit to change")
    checked = Limits.model_validate(dict(changes))
    return {key: getattr(checked, key) for key in changes}
