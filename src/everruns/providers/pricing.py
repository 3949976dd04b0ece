"""Built-in prices (US dollars per million tokens); override per model in the spec
(`model.pricing`) or in settings (`prices`). Unknown models cost 0 and say so."""

from __future__ import annotations

from typing import Any

from everruns.credentials import models_of
from everruns.spec import AgentSpec, ModelSpec, Pricing

# (input, output, cached input): cached input is what a prompt-cache read costs.
PRICES: dict[str, tuple[float, float, float]] = {
    "openai:gpt-4.1": (2.00, 8.00, 0.50),
    "openai:gpt-4.1-mini": (0.40, 1.60, 0.10),
    "openai:gpt-4.1-nano": (0.10, 0.40, 0.025),
    "openai:gpt-4o": (2.50, 10.00, 1.25),
    "openai:gpt-4o-mini": (0.15, 0.60, 0.075),
    "openai:o3": (2.00, 8.00, 0.50),
    "openai:o4-mini": (1.10, 4.40, 0.275),
    "openai:gpt-5": (1.25, 10.00, 0.125),
    "openai:gpt-5-mini": (0.25, 2.00, 0.025),
    "anthropic:claude-opus-4-1": (15.00, 75.00, 1.50),
    "anthropic:claude-sonnet-4-5": (3.00, 15.00, 0.30),
    "anthropic:claude-sonnet-4": (3.00, 15.00, 0.30),
    "anthropic:claude-haiku-4-5": (1.00, 5.00, 0.10),
    "anthropic:claude-3-5-haiku": (0.80, 4.00, 0.08),
}


def price_for(model: ModelSpec, overrides: dict[str, Pricing] | None = None) -> Pricing | None:
    if model.pricing is not None:
        return model.pricing
    label = f"{model.provider}:{model.name}"
    if overrides and label in overrides:
        return overrides[label]
    if label in PRICES:
        inp, outp, cached = PRICES[label]
        return Pricing(input=inp, output=outp, cached_input=cached)
    # Dated snapshots ("claude-sonnet-4-5-20250929") use their family's price.
    for known, (inp, outp, cached) in sorted(PRICES.items(), key=lambda kv: -len(kv[0])):
        if label.startswith(known + "-"):
            return Pricing(input=inp, output=outp, cached_input=cached)
    return None


def priced(usage: dict[str, Any], model: ModelSpec, price: Pricing | None) -> dict[str, Any]:
    """A call's usage as journaled: with its cost, and `cost_known: false` when the model
    has no price (scripted and python models cost nothing unless given `model.pricing`)."""
    out: dict[str, Any] = {**usage, "cost_usd": cost_usd(usage, price)}
    if price is None and not model.offline:
        out["cost_known"] = False
    return out


def unpriced_models(spec: AgentSpec, prices: dict[str, Pricing] | None) -> list[ModelSpec]:
    """The models of a spec (fallbacks and summarizer too) that have no price."""
    return [m for _, m in models_of(spec) if not m.offline and price_for(m, prices) is None]


def pricing_warning(model: ModelSpec) -> str:
    return (
        f"model {model.label} has no price: its cost shows as unknown and max_cost_usd "
        "cannot count it; add one to the spec (model.pricing: {input_per_mtok: 0.5, "
        f'output_per_mtok: 1.5}}) or to settings (prices: {{"{model.provider}:{model.name}": '
        "{input: 0.5, output: 1.5}})"
    )


def check_unpriced(spec: AgentSpec, prices: dict[str, Pricing] | None) -> str | None:
    """Why `max_cost_usd` cannot hold for this spec (a model without a price and no
    `limits.unpriced: allow`), or None."""
    if spec.limits.max_cost_usd is None or spec.limits.unpriced == "allow":
        return None
    missing = unpriced_models(spec, prices)
    if not missing:
        return None
    labels = ", ".join(m.label for m in missing)
    return (
        f"max_cost_usd={spec.limits.max_cost_usd:g} cannot be enforced: {labels} has no price "
        "(add model.pricing: {input_per_mtok: X, output_per_mtok: Y}, or set "
        "limits.unpriced: allow to count only priced calls)"
    )


def cost_usd(usage: dict[str, int], price: Pricing | None) -> float:
    """`input_tokens` include `cached_input_tokens`, which cost the cached rate (the
    input rate when the price has none)."""
    if price is None:
        return 0.0
    cached = min(int(usage.get("cached_input_tokens", 0)), int(usage.get("input_tokens", 0)))
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return (
        (usage.get("input_tokens", 0) - cached) * price.input
        + cached * cached_rate
        + usage.get("output_tokens", 0) * price.output
    ) / 1e6
