"""engine/runlog.py: one transaction per durable step, on a real store (both databases).

* A deferred event is folded at once but not written; the next append commits it with
  itself, in one transaction (the two events get consecutive seqs, published in order).
* `flush` commits the carry alone; with nothing carried it writes nothing.
* An `if_unchanged` append that finds the journal moved (a user message) raises Moved,
  yet the carried events are kept: committed alone, before the caller refolds.
"""

from __future__ import annotations

from typing import Any

import pytest

from everruns.core.events import EventType
from everruns.engine.broker import Broker
from everruns.engine.runlog import RunLog
from everruns.spec import parse_spec
from everruns.store import Moved, Store


async def claimed(store: Store, broker: Broker) -> RunLog:
    spec = parse_spec(
        {"name": "rl", "model": {"provider": "scripted", "responses": [{"text": "hi"}]}}
    )
    run_id = await store.create_run(spec, "go")
    (claim,) = await store.claim("w", limit=1, lease_ttl=60)
    log = RunLog(store, run_id, claim.epoch, broker)
    await log.refold()
    return log


def answer() -> dict[str, Any]:
    return {
        "attempt": 1,
        "message": {"role": "assistant", "content": "hi"},
        "usage": {"input_tokens": 1, "output_tokens": 1},
        "model": "scripted",
        "stop_reason": "end",
    }


async def test_a_deferred_event_rides_with_the_next_append(store: Store) -> None:
    broker = Broker()
    log = await claimed(store, broker)
    feed = broker.subscribe(log.run_id)
    await log.append(EventType.RUN_STARTED, {"worker": "w", "epoch": log.epoch})
    await log.append(EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "scripted"})
    before = len(await store.load_events(log.run_id))

    await log.append(EventType.LLM_COMPLETED, answer(), defer=True)
    assert log.state.steps == 1  # folded at once
    assert len(await store.load_events(log.run_id)) == before  # not written
    while not feed.empty():
        feed.get_nowait()

    last = await log.append(EventType.RUN_COMPLETED, {"result": "hi"})
    written = (await store.load_events(log.run_id))[before:]
    assert [e.type for e in written] == [EventType.LLM_COMPLETED, EventType.RUN_COMPLETED]
    assert [e.seq for e in written] == [before + 1, before + 2] == [before + 1, last.seq]
    assert log.state.last_seq == last.seq and log.state.terminal
    published = [feed.get_nowait()["type"] for _ in range(feed.qsize())]
    assert published == [EventType.LLM_COMPLETED, EventType.RUN_COMPLETED]


async def test_flush_commits_the_carry_alone_and_nothing_without_one(store: Store) -> None:
    log = await claimed(store, Broker())
    await log.append(EventType.RUN_STARTED, {"worker": "w", "epoch": log.epoch})
    await log.append(EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "scripted"})
    count = len(await store.load_events(log.run_id))
    await log.flush()
    assert len(await store.load_events(log.run_id)) == count

    await log.append(EventType.LLM_COMPLETED, answer(), defer=True)
    await log.flush()
    events = await store.load_events(log.run_id)
    assert [e.type for e in events[count:]] == [EventType.LLM_COMPLETED]
    assert log.state.last_seq == events[-1].seq


async def test_a_moved_journal_keeps_the_carried_events(store: Store) -> None:
    log = await claimed(store, Broker())
    await log.append(EventType.RUN_STARTED, {"worker": "w", "epoch": log.epoch})
    await log.append(EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "scripted"})
    await log.append(EventType.LLM_COMPLETED, answer(), defer=True)
    await store.signal(log.run_id, EventType.MESSAGE_USER, {"content": "one more thing"})

    with pytest.raises(Moved):
        await log.append(EventType.RUN_COMPLETED, {"result": "hi"}, if_unchanged=True)
    types = [e.type for e in await store.load_events(log.run_id)]
    assert types[-2:] == [EventType.MESSAGE_USER, EventType.LLM_COMPLETED]
    assert EventType.RUN_COMPLETED not in types

    state = await log.refold()
    assert state.steps == 1 and not state.terminal
    assert state.last_seq == len(types)
