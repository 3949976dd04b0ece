"""Sub-agents: a `spawn_agent` call creates one child run, the same one on every attempt.

The child's id derives from the call's idempotency key, so a spawn repeated after a
crash finds the child it already created. Depth and fan-out limits come from the
`subagents` tool's options; a child never has more trust than its parent.
"""

from __future__ import annotations

import hashlib

from everruns.engine.budgets import TreeBudget
from everruns.engine.keys import bindings
from everruns.engine.runlog import RunLog
from everruns.policy import check_spec
from everruns.providers.pricing import unpriced_models
from everruns.settings import Settings
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Store, StoreError
from everruns.tools.base import SpawnRequest, ToolError
from everruns.tools.registry import ToolSpecError, build_tools


class Subagents:
    """Spawns the children of one run (`spec`, trusted as `origin`)."""

    def __init__(self, log: RunLog, store: Store, settings: Settings, spec: AgentSpec, origin: str):
        self.log = log
        self.store = store
        self.settings = settings
        self.spec = spec
        self.origin = origin
        self._spawning: set[str] = set()

    async def spawn(
        self, call_id: str, request: SpawnRequest, trace: dict[str, str] | None = None
    ) -> str:
        """Create (or find) the child run of call `call_id`; its id. ToolError: refused.

        `trace`: the spawn call's trace context, kept in the child's `run.created` so the
        child's trace links to the span that spawned it."""
        state = self.log.state
        options = next((t.options for t in self.spec.tools if t.builtin == "subagents"), {})
        max_depth = int(options.get("max_depth", 3))
        max_children = int(options.get("max_children", 10))
        if state.depth + 1 > max_depth:
            raise ToolError(f"sub-agent depth limit reached (max_depth={max_depth})")
        child = child_id(f"{self.log.run_id}:{call_id}")
        # Parallel spawns of one answer are counted before their results are journaled.
        known = set(state.children) | self._spawning
        if child not in known and len(known) >= max_children:
            raise ToolError(f"sub-agent fan-out limit reached (max_children={max_children})")
        self._spawning.add(child)
        origin = self.origin  # a child never has more trust than its parent
        if request.spec is not None:
            spec = parse_spec(request.spec, "spawn_agent.spec")
        elif request.agent is not None:
            try:
                spec = await self.store.get_agent(request.agent)
                if await self.store.get_agent_origin(request.agent) == "api":
                    origin = "api"
            except StoreError as exc:
                raise ToolError(str(exc)) from None
        else:
            spec = self.spec
        await self._check_prices(spec)
        try:
            # A spec the model wrote may only name credentials the operator bound.
            check_spec(
                spec,
                origin,
                self.settings,
                await bindings(self.store, self.settings, spec),
                spawned=request.spec is not None,
            )
            build_tools(spec, allow_private_networks=self.settings.allow_private_networks)
        except ToolSpecError as exc:
            raise ToolError(f"the sub-agent's spec is invalid: {exc}") from None
        return await self.store.create_run(
            spec,
            request.input,
            parent_id=self.log.run_id,
            run_id=child,
            created_data={"depth": self.log.state.depth + 1, **({"trace": trace} if trace else {})},
            origin=origin,
            # An inline spec the model writes again reuses its version (content hash).
            any_version=request.spec is not None,
        )

    async def _check_prices(self, spec: AgentSpec) -> None:
        """A child whose model has no price may not join a tree with a cost limit (one
        of its ancestors' `max_cost_usd`, unless that one says `limits.unpriced: allow`)."""
        missing = unpriced_models(spec, self.settings.prices)
        if not missing:
            return
        holder = await TreeBudget(self.log, self.store, self.spec).cost_limit_without_prices()
        if holder is not None:
            run_id, limit = holder
            raise ToolError(
                f"the sub-agent's model {missing[0].label} has no price and run {run_id} has "
                f"max_cost_usd={limit:g}: give the sub-agent's model a price (model.pricing: "
                "{input_per_mtok: X, output_per_mtok: Y}) or set limits.unpriced: allow"
            )


def child_id(idempotency_key: str) -> str:
    """The same child run id on every attempt of one spawn call."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return "run_" + digest[:26]
