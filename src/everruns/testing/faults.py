"""Provider faults on purpose: 429 with Retry-After, 529, 5xx, timeouts, truncated
and stalled streams, at given steps or at a rate, around any model.

`faults(spec, at={2: "rate_limited"}, rate=0.2, seed=7)` returns a copy of the
spec whose model is the fault injector (provider `python`, function
`everruns.testing.faults:serve`) wrapping the spec's own model. The plan travels
in the model's parameters (and is removed before the real model is called), so
it works wherever the spec runs: in this process, in the crash matrix's worker
subprocesses, on any worker. Decisions depend only on (seed, step, attempt), so
a crashed and repeated call meets the same fault.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from everruns.core.events import LLM_FAILED, LLM_STARTED, Event
from everruns.providers.base import ProviderError
from everruns.providers.python import ModelRequest, ModelResponse
from everruns.spec import AgentSpec, ModelSpec
from everruns.testing._procs import SpecLike, as_spec
from everruns.testing.ask import ask_model

SERVE = "everruns.testing.faults:serve"
PLAN_KEY = "everruns_faults"
KINDS = ("rate_limited", "overloaded", "server_error", "timeout", "truncated", "stalled")


def faults(
    spec: SpecLike,
    *,
    at: Mapping[int, str | Iterable[str]] | None = None,
    rate: float = 0.0,
    kinds: Iterable[str] = KINDS,
    seed: int = 0,
    retry_after: float = 0.5,
    stall: float = 0.2,
) -> AgentSpec:
    """The spec with faults injected into its model.

    `at`: LLM step (1 = first answer) -> the fault of its first attempt, or a list
    of faults for attempts 1, 2, ...; `rate`: the chance that any other attempt
    fails, with a fault drawn from `kinds`; `retry_after`: seconds a 429 asks to
    wait; `stall`: seconds a stalled stream hangs before it breaks.
    """
    agent = as_spec(spec)
    kinds = list(kinds)
    plan_at: dict[str, list[str]] = {}
    for step, value in (at or {}).items():
        plan_at[str(int(step))] = [value] if isinstance(value, str) else list(value)
    for kind in [*kinds, *(k for ks in plan_at.values() for k in ks)]:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(KINDS)})")
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be between 0 and 1")
    inner = agent.model.model_dump(mode="json", exclude_none=True)
    plan = {
        "at": plan_at,
        "rate": rate,
        "kinds": kinds,
        "seed": seed,
        "retry_after": retry_after,
        "stall": stall,
        "model": inner,
    }
    model = ModelSpec(
        provider="python",
        function=SERVE,
        name=f"faults({agent.model.label})",
        parameters={**agent.model.parameters, PLAN_KEY: plan},
        timeouts=agent.model.timeouts,
        pricing=agent.model.pricing,
    )
    return agent.model_copy(update={"model": model})


def choose(plan: Mapping[str, Any], step: int, attempt: int) -> str | None:
    """The fault of this attempt, or None."""
    listed = plan["at"].get(str(step))
    if listed is not None:
        return listed[attempt - 1] if attempt <= len(listed) else None
    if not plan["rate"] or not plan["kinds"]:
        return None
    digest = hashlib.sha256(f"{plan['seed']}:{step}:{attempt}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= plan["rate"]:
        return None
    return str(plan["kinds"][digest[8] % len(plan["kinds"])])


async def inject(kind: str, plan: Mapping[str, Any], request: ModelRequest) -> None:
    """Fail this attempt the way a real provider does."""
    step = f"(injected at step {request.step}, attempt {request.attempt})"
    if kind == "rate_limited":
        raise ProviderError(
            f"429 Too Many Requests {step}",
            error_class="rate_limited",
            retry_after=float(plan["retry_after"]),
            status=429,
        )
    if kind == "overloaded":
        raise ProviderError(f"529 Overloaded {step}", error_class="overloaded", status=529)
    if kind == "server_error":
        raise ProviderError(
            f"503 Service Unavailable {step}", error_class="server_error", status=503
        )
    if kind == "timeout":
        raise ProviderError(f"the request timed out {step}", error_class="timeout")
    if kind == "truncated":
        raise ProviderError(
            f"the stream ended before the answer was complete {step}", error_class="stream_broken"
        )
    await asyncio.sleep(float(plan["stall"]))
    raise ProviderError(
        f"the stream stalled: nothing received for {plan['stall']:g}s {step}",
        error_class="stream_broken",
    )


async def serve(request: ModelRequest) -> ModelResponse:
    """The injector's model function: a planned fault, or the wrapped model's answer."""
    params = dict(request.parameters)
    plan = params.pop(PLAN_KEY, None)
    if not isinstance(plan, dict):
        raise ProviderError(
            "faults: no fault plan in the model parameters (build the spec with faults())",
            error_class="bad_request",
            retryable=False,
        )
    kind = choose(plan, request.step, request.attempt) if request.purpose == "reason" else None
    if kind is not None:
        await inject(kind, plan, request)
    inner = ModelSpec.model_validate(plan["model"])
    return await ask_model(inner, request)


@dataclass(frozen=True)
class Retry:
    step: int
    attempt: int
    error_class: str
    status: int | None
    retry_after: float | None
    waited: float  # seconds from the failure to the next attempt


@dataclass
class RunReport:
    """A finished run and the LLM retries it took."""

    run_id: str
    status: str
    result: str | None
    events: list[Event]

    @property
    def retries(self) -> list[Retry]:
        out = []
        step = 0
        for i, e in enumerate(self.events):
            if e.type == LLM_STARTED:
                step = int(e.data.get("step", 0))
            if e.type != LLM_FAILED:
                continue
            later = next((x for x in self.events[i + 1 :] if x.type == LLM_STARTED), None)
            out.append(
                Retry(
                    step,
                    int(e.data.get("attempt", 0)),
                    str(e.data.get("class")),
                    e.data.get("status"),
                    e.data.get("retry_after"),
                    round(later.ts - e.ts, 3) if later else 0.0,
                )
            )
        return out

    @property
    def total_wait(self) -> float:
        return round(sum(r.waited for r in self.retries), 3)

    def format(self) -> str:
        lines = [
            f"run {self.run_id}: {self.status}; {len(self.retries)} retries, "
            f"{self.total_wait:g}s waited"
        ]
        for r in self.retries:
            asked = f", Retry-After {r.retry_after:g}s" if r.retry_after is not None else ""
            status = f" {r.status}" if r.status else ""
            lines.append(
                f"  step {r.step} attempt {r.attempt}: {r.error_class}{status}{asked}; "
                f"retried after {r.waited:g}s"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
