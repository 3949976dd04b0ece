"""Example user code: a python model whose answer depends on the previous tool result."""

from __future__ import annotations

from everruns import ProviderError, tool
from everruns.testing import ModelRequest, ModelResponse, ToolCall

PRICES = {"apple": 3, "pear": 5}


@tool(effect="pure")
def price(item: str) -> str:
    """The price of an item in EUR."""
    return str(PRICES.get(item, 0))


def respond(request: ModelRequest) -> str | list[ToolCall]:
    """Ask for the price of the item in the user message, then answer with it."""
    if request.last_tool_result is None:
        item = (request.last_user_message or "").split()[-1]
        return [ToolCall("price", {"item": item})]
    return f"it costs {request.last_tool_result} EUR"


async def flaky(request: ModelRequest) -> ModelResponse:
    """An async model that is rate limited on its first attempt of every step."""
    if request.attempt == 1:
        raise ProviderError("slow down", error_class="rate_limited", retry_after=0.2)
    return ModelResponse(text=f"answered step {request.step}", input_tokens=7, output_tokens=3)


def broken(request: ModelRequest) -> object:
    """Returns something that is not an answer."""
    return 42


def refuses(request: ModelRequest) -> str:
    raise ProviderError("bad credentials", error_class="auth")
