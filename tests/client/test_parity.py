"""The sync and async SDK clients have the same methods with the same signatures.

Both are shells over `everruns.client.core`; this keeps them from drifting apart again
(the async client once lacked list, pause, resume, approve, deny and fork).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from everruns import AsyncClient, Client

# The only names that differ: the lifecycle protocol (httpx's own convention).
LIFECYCLE = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def _public(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name in LIFECYCLE or name in LIFECYCLE.values()
    }


def _namespaces() -> Iterator[tuple[str, type, type]]:
    sync, aio = Client("http://127.0.0.1:9"), AsyncClient("http://127.0.0.1:9")
    try:
        yield "client", type(sync), type(aio)
        for attr in ("agents", "runs", "schedules", "secrets"):
            yield attr, type(getattr(sync, attr)), type(getattr(aio, attr))
        shells = {"agents", "runs", "schedules", "secrets"}
        assert {k for k in vars(sync) if not k.startswith("_")} == shells
        assert {k for k in vars(aio) if not k.startswith("_")} == shells
    finally:
        sync.close()


NAMESPACES = list(_namespaces())


@pytest.mark.parametrize(("where", "sync_cls", "async_cls"), NAMESPACES, ids=lambda x: str(x))
def test_same_method_names(where: str, sync_cls: type, async_cls: type) -> None:
    sync_names = {LIFECYCLE.get(n, n) for n in _public(sync_cls)}
    assert sync_names == set(_public(async_cls)), f"{where}: methods differ"


@pytest.mark.parametrize(("where", "sync_cls", "async_cls"), NAMESPACES, ids=lambda x: str(x))
def test_same_signatures_and_async_kinds(where: str, sync_cls: type, async_cls: type) -> None:
    sync_methods, async_methods = _public(sync_cls), _public(async_cls)
    assert sync_methods, where
    for name, sync_fn in sync_methods.items():
        async_fn = async_methods[LIFECYCLE.get(name, name)]
        s, a = inspect.signature(sync_fn), inspect.signature(async_fn)
        label = f"{where}.{name}"
        assert list(s.parameters.values()) == list(a.parameters.values()), label
        sync_return = str(s.return_annotation)
        if inspect.isgeneratorfunction(sync_fn):
            assert inspect.isasyncgenfunction(async_fn), f"{label}: not an async iterator"
            assert sync_return.startswith("Iterator["), label
            assert str(a.return_annotation) == "Async" + sync_return, label
        else:
            assert not inspect.iscoroutinefunction(sync_fn), f"{label}: sync one is async"
            assert inspect.iscoroutinefunction(async_fn), f"{label}: async one is not"
            expected = "AsyncClient" if sync_return == "Client" else sync_return
            assert str(a.return_annotation) == expected, label
        if name != "__init__":
            assert (sync_fn.__doc__ is None) == (async_fn.__doc__ is None), label


def test_constructors_match() -> None:
    assert inspect.signature(Client.__init__) == inspect.signature(AsyncClient.__init__)


def test_the_async_client_has_what_it_once_lacked() -> None:
    runs = dict(_public(NAMESPACES[2][2]))
    for name in ("list", "pause", "resume", "approve", "deny", "fork", "events"):
        assert inspect.iscoroutinefunction(runs[name]), name
