"""Tree budgets, checked before every LLM call anywhere in a run tree.

A parent's `max_cost_usd` / `max_tokens` bound the sum of the parent and all its
descendants. Before each call a run reads, for itself and every ancestor with such a
limit, the tree's ledger from the store (the sum of each run's own journal-projected
totals, store/ledger.py) plus what it has folded but not yet committed, and fails with
`budget_exceeded` naming the run whose limit is reached. The read is not a lock: calls
that passed their check before the limit was crossed still finish, so the overshoot is
at most one call per concurrently running run of the tree (README, "Budgets").
"""

from __future__ import annotations

from everruns.core.budget import breach, effective_limits, has_tree_limit
from everruns.core.decide import Fail
from everruns.engine.runlog import RunLog
from everruns.spec import AgentSpec, Limits
from everruns.store import Store


class TreeBudget:
    """The budget checks of one run (`spec`) within its tree."""

    def __init__(self, log: RunLog, store: Store, spec: AgentSpec):
        self.log = log
        self.store = store
        self.spec = spec

    async def limits(self) -> list[tuple[str, str, Limits]]:
        """(run id, agent, effective limits) of the run and each ancestor, nearest first."""
        out: list[tuple[str, str, Limits]] = []
        for ancestor in await self.store.ancestry(self.log.run_id):
            if ancestor.id == self.log.run_id:  # its own limits as its fold says
                out.append(
                    (ancestor.id, "", effective_limits(self.spec.limits, self.log.state.limits))
                )
                continue
            spec = await self.store.get_agent(ancestor.agent_name, ancestor.agent_version)
            out.append(
                (ancestor.id, ancestor.agent_name, effective_limits(spec.limits, ancestor.limits))
            )
        return out

    async def check(self) -> Fail | None:
        """A `budget_exceeded` failure when a tree limit of the run or an ancestor is
        reached, else None. A run with no parent and no children has only its own
        journal to count, which `decide` already did: no read then."""
        state = self.log.state
        if state.depth == 0 and not state.children:
            return None
        limited = [entry for entry in await self.limits() if has_tree_limit(entry[2])]
        if not limited:
            return None
        trees = await self.store.tree_ledgers([run_id for run_id, _, _ in limited])
        pending = self.log.carried_charge()
        for run_id, agent, limits in limited:
            tree = trees.get(run_id)
            if tree is None:
                continue
            reached = breach(limits, tree + pending)
            if reached is None:
                continue
            if run_id == self.log.run_id:
                message = f"{reached} by this run and its sub-agents"
            else:
                message = f"the tree budget of run {run_id} ({agent}): {reached} in its tree"
            return Fail("budget_exceeded", message, limit_run=run_id)
        return None

    async def cost_limit_without_prices(self) -> tuple[str, float] | None:
        """The nearest run of the tree (itself or an ancestor) whose `max_cost_usd` may not
        meet a model without a price (`limits.unpriced` is not `allow`): (run id, limit)."""
        for run_id, _, limits in await self.limits():
            if limits.max_cost_usd is not None and limits.unpriced != "allow":
                return run_id, limits.max_cost_usd
        return None
