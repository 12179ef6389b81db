"""The event bus: live fan-out, slow subscribers dropped, bounded history, replay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.events import EVENT_TYPES, EventBus, EventsSection, SubscriptionDropped
from hyperhive_core.names import InvalidName
from hyperhive_core.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    yield store
    store.close()


async def saved(store):
    """(agent, type, n) of every persisted event, oldest first."""

    def read(db):
        return [
            (agent, type_, db.conn.execute("SELECT json_extract(?, '$.n')", (data,)).fetchone()[0])
            for agent, type_, data in db.execute("SELECT agent, type, data FROM events ORDER BY id")
        ]

    return await store.read(read)


def test_the_event_types_are_the_documented_ones():
    """docs/broker.md lists every core event type, and nothing else."""
    text = (Path(__file__).parent.parent / "docs" / "broker.md").read_text()
    listing = text.split("Types: ", 1)[1].split(". `data`", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", listing)) == EVENT_TYPES


async def test_subscribers_get_their_agents_events_in_order(store, nursery):
    bus = EventBus(store)
    await nursery.start(bus.serve)
    async with bus.subscribe("alice") as alice, bus.subscribe() as everyone:
        published = [
            bus.publish("alice", "turn_start", n=1),
            bus.publish("bob", "note", n=2),
            bus.publish("alice", "turn_end", n=3),
        ]
        assert [await anext(alice) for _ in range(2)] == [published[0], published[2]]
        assert [await anext(everyone) for _ in range(3)] == published
    ids = [event.id for event in published]
    assert ids == sorted(set(ids))


async def test_slow_subscriber_is_dropped_and_told_while_others_keep_up(store):
    bus = EventBus(store, EventsSection(subscriber_buffer=4))
    received = []
    async with bus.subscribe("alice") as slow, bus.subscribe("alice") as fast, trio.open_nursery() as nursery:

        async def keep_up():
            async for event in fast:
                received.append(event.data["n"])

        nursery.start_soon(keep_up)
        for n in range(10):
            bus.publish("alice", "assistant_text", n=n)  # never waits, whoever lags
            await trio.testing.wait_all_tasks_blocked()
        assert received == list(range(10))

        # The slow one still gets what fitted in its queue, then the news.
        assert [(await anext(slow)).data["n"] for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(SubscriptionDropped, match="fell more than 4 events behind .* resubscribe from event"):
            await anext(slow)
        nursery.cancel_scope.cancel()


async def flushed(bus):
    """Run the bus's writer just long enough to persist what is pending."""
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.serve)
        nursery.cancel_scope.cancel()  # stopping flushes what is left


async def test_history_is_a_bounded_ring_per_agent(store):
    bus = EventBus(store, EventsSection(history_per_agent=5))
    for first in range(0, 12, 4):  # three batches, trimmed as each is written
        for n in range(first, first + 4):
            bus.publish("alice", "tool_use", n=n)
        await flushed(bus)
    for n in range(3):
        bus.publish("bob", "note", n=n)
    await flushed(bus)
    assert await saved(store) == [("alice", "tool_use", n) for n in range(7, 12)] + [
        ("bob", "note", n) for n in range(3)
    ]
    assert [event.data["n"] for event in await bus.history("alice", limit=2)] == [10, 11]


async def test_replay_after_restart_from_last_event_id_then_live(store):
    bus = EventBus(store)
    before = [bus.publish(agent, "note", n=n) for n, agent in enumerate(["alice", "bob", "alice", "alice"])]
    await flushed(bus)

    restarted = EventBus(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.serve)
        last_seen = before[0].id  # the browser saw the first event, then lost its connection
        async with restarted.subscribe("alice", after_id=last_seen) as stream:
            live = restarted.publish("alice", "turn_start", n=4)
            got = [await anext(stream) for _ in range(3)]
        assert [(event.id, event.data) for event in got] == [
            (before[2].id, {"n": 2}),
            (before[3].id, {"n": 3}),
            (live.id, {"n": 4}),
        ]
        assert live.id > before[-1].id  # ids keep growing across restarts
        nursery.cancel_scope.cancel()


async def test_replay_includes_events_not_yet_on_disk_without_duplicates(store):
    bus = EventBus(store)  # no writer running: nothing is persisted yet
    first = bus.publish("alice", "note", n=0)
    second = bus.publish("alice", "note", n=1)
    async with bus.subscribe("alice", after_id=first.id) as stream:
        third = bus.publish("alice", "note", n=2)
        assert [await anext(stream) for _ in range(2)] == [second, third]
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.serve)
            bus.publish("alice", "note", n=3)
            assert (await anext(stream)).data == {"n": 3}  # `third` is not delivered twice
            nursery.cancel_scope.cancel()
    assert [n for _, _, n in await saved(store)] == [0, 1, 2, 3]


async def test_ready_takes_what_arrived_together_without_repeats_or_waiting(store):
    bus = EventBus(store, EventsSection(subscriber_buffer=4))
    before = bus.publish("alice", "note", n=0)
    async with bus.subscribe("alice", after_id=0) as stream:
        together = [bus.publish("alice", "note", n=n) for n in range(1, 4)]
        assert await anext(stream) == before  # replayed from history
        assert stream.ready() == together
        assert stream.ready() == []  # nothing waits: it does not wait either
        later = bus.publish("alice", "note", n=4)
        assert await anext(stream) == later
        for n in range(5, 10):  # one more than its queue holds: dropped
            bus.publish("alice", "note", n=n)
        assert [event.data["n"] for event in stream.ready()] == [5, 6, 7, 8]
        with pytest.raises(SubscriptionDropped):
            await anext(stream)


async def test_bad_events_are_refused_at_publish(store):
    bus = EventBus(store)
    with pytest.raises(ValueError, match="unknown event type 'turn_begin'"):
        bus.publish("alice", "turn_begin")
    with pytest.raises(InvalidName):
        bus.publish("../alice", "note")
    with pytest.raises(TypeError, match="not JSON serializable"):
        bus.publish("alice", "note", payload=object())
    assert await bus.history() == []
