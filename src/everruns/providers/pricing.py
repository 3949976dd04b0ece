"""Built-in prices (US dollars per million tokens); override per model in the spec
(`model.pricing`) or in settings (`prices`). Unknown models cost 0 and say so."""

from __future__ import annotations

from everruns.spec import ModelSpec, Pricing

PRICES: dict[str, tuple[float, float]] = {
    "openai:gpt-4.1": (2.00, 8.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
    "openai:gpt-4.1-nano": (0.10, 0.40),
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:o3": (2.00, 8.00),
    "openai:o4-mini": (1.10, 4.40),
    "openai:gpt-5": (1.25, 10.00),
    "openai:gpt-5-mini": (0.25, 2.00),
    "anthropic:claude-opus-4-1": (15.00, 75.00),
    "anthropic:claude-sonnet-4-5": (3.00, 15.00),
    "anthropic:claude-sonnet-4": (3.00, 15.00),
    "anthropic:claude-haiku-4-5": (1.00, 5.00),
    "anthropic:claude-3-5-haiku": (0.80, 4.00),
}


def price_for(model: ModelSpec, overrides: dict[str, Pricing] | None = None) -> Pricing | None:
    if model.pricing is not None:
        return model.pricing
    label = f"{model.provider}:{model.name}"
    if overrides and label in overrides:
        return overrides[label]
    if label in PRICES:
        return Pricing(input=PRICES[label][0], output=PRICES[label][1])
    # Dated snapshots ("claude-sonnet-4-5-20250929") use their family's price.
    for known, (inp, outp) in sorted(PRICES.items(), key=lambda kv: -len(kv[0])):
        if label.startswith(known + "-"):
            return Pricing(input=inp, output=outp)
    return None


def cost_usd(usage: dict[str, int], price: Pricing | None) -> float:
    if price is None:
        return 0.0
    return (
        usage.get("input_tokens", 0) * price.input + usage.get("output_tokens", 0) * price.output
    ) / 1e6
