"""Python function tools: schema from hints and docstrings, validation, sync and async."""

from __future__ import annotations

import pytest

from everruns import ToolContext, tool
from everruns.tools.base import ToolError
from everruns.tools.python import ToolLoadError, from_function, load_function

CTX = ToolContext(run_id="run_1", tool_call_id="c1", idempotency_key="run_1:c1", attempt=1)


@tool(effect="idempotent")
def charge(customer: str, cents: int, ctx: ToolContext, note: str = "") -> dict:
    """Charge a customer.

    Args:
        customer: the customer id
        cents: amount in cents
    """
    return {"customer": customer, "cents": cents, "key": ctx.idempotency_key}


@tool
async def aecho(text: str) -> str:
    """Echo asynchronously."""
    return text.upper()


def plain(x: int) -> int:
    return x * 2


def test_schema_from_hints_and_docstring() -> None:
    t = from_function(charge)
    assert t.name == "charge"
    assert t.effect == "idempotent"
    assert t.description == "Charge a customer."
    props = t.parameters["properties"]
    assert set(props) == {"customer", "cents", "note"}
    assert props["cents"]["type"] == "integer"
    assert props["customer"]["description"] == "the customer id"
    assert t.parameters["required"] == ["customer", "cents"]


async def test_invoke_passes_context_and_validates() -> None:
    t = from_function(charge)
    out = await t.invoke({"customer": "c9", "cents": 5}, CTX)
    assert out == {"customer": "c9", "cents": 5, "key": "run_1:c1"}
    with pytest.raises(ToolError, match="cents"):
        await t.invoke({"customer": "c9", "cents": "lots"}, CTX)
    with pytest.raises(ToolError, match="bogus: Extra inputs"):
        await t.invoke({"customer": "c9", "cents": 1, "bogus": 1}, CTX)


async def test_async_and_undecorated_functions() -> None:
    assert await from_function(aecho).invoke({"text": "hi"}, CTX) == "HI"
    t = from_function(plain)
    assert t.effect == "at_most_once"
    assert await t.invoke({"x": 4}, CTX) == 8


def test_bad_effect_rejected() -> None:
    with pytest.raises(ValueError, match="effect"):
        tool(effect="sometimes")


def test_load_function_errors() -> None:
    with pytest.raises(ToolLoadError, match="cannot import"):
        load_function("no_such_module_xyz:f")
    with pytest.raises(ToolLoadError, match="no attribute"):
        load_function("json:no_such_function")
    # Only functions declared with @tool: never an arbitrary callable.
    for path in ("json:dumps", "os:system", "builtins:eval", "subprocess:Popen"):
        with pytest.raises(ToolLoadError, match="not a function decorated with @everruns"):
            load_function(path)
    assert load_function(f"{__name__}:charge") is charge
    with pytest.raises(ToolLoadError, match="not a function decorated"):
        load_function(f"{__name__}:plain")
