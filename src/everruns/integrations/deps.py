"""Per-run dependencies of framework runs: Pydantic AI's `deps`, the OpenAI Agents SDK's
run context (`RunContextWrapper.context`).

A framework run is executed, and after a crash executed again, by whichever worker holds
it, rebuilt from what is stored. So the caller's value travels as JSON in the run's
`run.created` event (`deps`, read back as `FrameworkSession.deps`), and each execution
rebuilds it from there: validated back as a type (Pydantic AI's `deps_type`, the SDK's
`context_type=`), or handed to a factory `fn(run_id, value)` (sync or async) that builds
what cannot be JSON (connections, clients) in the executing worker. A by-reference spec
may carry static deps (`agent.deps`), used when the run has none of its own.

The first execution gets the rebuilt value too, never the caller's object, so the first
execution and a replay see the same thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from everruns.engine.framework import FrameworkSession

if TYPE_CHECKING:
    from everruns.store import Store

# fn(run_id, value) -> the live object (or an awaitable of it); `value` is the journaled
# JSON value (the caller's, else the spec's), or None.
Factory = Callable[[str, Any], Any]


def journaled(value: Any, what: str, rebuild: Any, hint: str) -> Any:
    """The JSON form of a caller's `value` (None if none was given) as it will be
    journaled. TypeError, naming the type and the problem, if it has none, or if it does
    not validate back as `rebuild` (a type; None: not checked, a factory builds it) into
    an equal value."""
    if value is None:
        return None
    try:
        data = to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise TypeError(
            f"{what}: a {type(value).__name__} cannot be journaled as JSON ({exc}); a resumed "
            f"run is rebuilt on any worker from what is stored. {hint}"
        ) from None
    if rebuild is None:
        return data
    back = rebuilt(data, rebuild, what)
    if not _survives(value, back):
        why = (
            f"the agent declares no type for it, so it would come back as its JSON (a "
            f"{type(back).__name__}): declare it (Pydantic AI: Agent(..., deps_type=...))"
            if rebuild is object
            else "validated back from its JSON it differs from the given one (a SecretStr "
            "is journaled masked, a field left out of serialization is lost)"
        )
        raise TypeError(
            f"{what}: a {type(value).__name__} does not survive the journal: {why}. {hint}"
        )
    return data


def _survives(value: Any, back: Any) -> bool:
    """Whether the value rebuilt from the JSON equals the given one, where the type
    defines equality (a dataclass, a model); other objects are taken as they come."""
    if type(value).__eq__ is object.__eq__:
        return True
    try:
        return bool(back == value)
    except Exception:
        return True


def rebuilt(data: Any, kind: Any, what: str) -> Any:
    """`data` (journaled JSON) validated back as `kind` (an undeclared type, `object`,
    gives the JSON value back); TypeError if it does not validate."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        name = getattr(kind, "__name__", str(kind))
        raise TypeError(f"{what}: the journaled value does not validate as {name}: {exc}") from None


def value_of(session: FrameworkSession) -> Any:
    """The run's journaled value, else the spec's static `agent.deps` (None: neither)."""
    if session.deps is not None:
        return session.deps
    return session.spec.agent.deps if session.spec.agent is not None else None


async def build(session: FrameworkSession, kind: Any, factory: Factory | None, what: str) -> Any:
    """What this execution hands the framework: the factory's object, else the journaled
    value validated back as `kind` (None: given as JSON), else None."""
    value = value_of(session)
    if factory is not None:
        made = factory(session.run_id, value)
        return await made if inspect.isawaitable(made) else made
    if value is None or kind is None:
        return value
    return rebuilt(value, kind, what)


async def check_resumed(store: Store, run_id: str, data: Any, what: str) -> None:
    """A run keeps the value it was created with: calling it again (resuming it, or
    rebuilding its result) with a different one is an error, never silently ignored.
    `data` None (none given) takes the journaled one."""
    if data is None:
        return
    created = await store.load_events(run_id, limit=1)
    journaled = created[0].data.get("deps") if created else None
    if journaled != data:
        raise ValueError(
            f"run {run_id} was created with {what} {_short(journaled)}; it cannot go on with "
            f"different {what} {_short(data)} (a run keeps the {what} it started with: start a "
            f"new run, or pass the same {what} or none)"
        )


def _short(value: Any) -> str:
    text = "none" if value is None else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
