"""SSE streams: replay, the live marker, Last-Event-ID resumption without gaps or repeats,
and the fan-out: every stream writes the same bytes, what arrived together in one write."""

from __future__ import annotations

from contextlib import asynccontextmanager

import h11
import pytest
import trio
from hyperhive_web import dashboard_of
from hyperhive_web.stream import KEEPALIVE, LIVE, concerns, encode
from webkit import dashboard_hive, operator

from hyperhive_core.testing import needs_claude

pytestmark = needs_claude


async def read_until_live(stream) -> list:
    messages = []
    async for message in stream:
        if message.event == "live":
            return messages
        if message.data:
            messages.append(message)
    raise AssertionError("the stream ended before it went live")


async def test_a_reconnect_resumes_after_last_event_id_with_no_gap_and_no_repeat(hive):
    http = operator(hive)
    with trio.fail_after(20):
        async with http.sse("/api/agents/worker/events?tail=5") as stream:
            await read_until_live(stream)
            hive.events.publish("worker", "note", text="one")
            first = await anext(stream)
        # Disconnected: these happen while nobody listens.
        for text in ("two", "three"):
            hive.events.publish("worker", "note", text=text)
        async with http.sse("/api/agents/worker/events?tail=5", {"Last-Event-ID": first.id}) as stream:
            replayed = await read_until_live(stream)
            hive.events.publish("worker", "note", text="four")
            live = await anext(stream)
    assert first.json()["data"] == {"text": "one"}
    assert int(first.id) == first.json()["id"]
    assert [m.json()["data"]["text"] for m in replayed] == ["two", "three"]
    assert live.json()["data"]["text"] == "four"


async def test_tail_replays_the_newest_events_of_the_agent_only(hive):
    for index in range(8):
        hive.events.publish("worker", "note", text=f"w{index}")
        hive.events.publish("manager", "note", text=f"m{index}")
    with trio.fail_after(20):
        async with operator(hive).sse("/api/agents/worker/events?tail=3") as stream:
            replayed = await read_until_live(stream)
    assert [m.json()["data"]["text"] for m in replayed] == ["w5", "w6", "w7"]


async def test_an_agent_stream_carries_messages_sent_to_it(hive):
    with trio.fail_after(20):
        async with operator(hive).sse("/api/agents/worker/events") as stream:
            await read_until_live(stream)
            hive.events.publish("manager", "note", text="not for worker")
            hive.events.publish("manager", "message_sent", id=7, to="worker", kind="text", preview="hi")
            message = await anext(stream)
    assert message.json()["agent"] == "manager"
    assert message.json()["data"]["to"] == "worker"


async def test_the_hive_stream_replays_after_the_given_id_then_every_agent(hive):
    mark = hive.events.publish("worker", "note", text="before")
    hive.events.publish("manager", "note", text="after, manager")
    with trio.fail_after(20):
        async with operator(hive).sse(f"/api/events?after={mark.id}") as stream:
            replayed = await read_until_live(stream)
            hive.events.publish("worker", "note", text="live, worker")
            live = await anext(stream)
    assert [m.json()["data"]["text"] for m in replayed] == ["after, manager"]
    assert live.json()["agent"] == "worker"


async def test_a_closed_stream_stops_listening(hive):
    listeners = dashboard_of(hive).feed.listeners
    with trio.fail_after(20):
        async with operator(hive).sse("/api/events") as stream:
            await read_until_live(stream)
            assert len(listeners) == 1
        while listeners:
            await trio.sleep(0.05)


async def test_a_stalled_client_is_cut_off_and_resumes_from_history(hive, monkeypatch):
    http = operator(hive)
    bulk = "x" * 256 * 1024  # enough of them to fill the sockets' buffers of a client that stopped reading
    with trio.fail_after(60):
        async with http.sse("/api/events") as stream:
            await read_until_live(stream)
            (listener,) = dashboard_of(hive).feed.listeners
            monkeypatch.setattr(listener, "limit", 3)
            published = []
            while not listener.overflowed:
                published.append(hive.events.publish("worker", "note", text=f"n{len(published)}", bulk=bulk))
                await trio.sleep(0.01)
            received = [message async for message in stream]  # the server ends the stream
        async with http.sse("/api/events", {"Last-Event-ID": received[-1].id}) as stream:
            replayed = await read_until_live(stream)
    texts = [m.json()["data"]["text"] for m in received + replayed]
    assert texts == [event.data["text"] for event in published]


@pytest.fixture
async def quick_keepalive_hive(tmp_path, web_pm, monkeypatch):
    monkeypatch.setattr("hyperhive_web.stream.KEEPALIVE_SECONDS", 0.2)  # before the feed starts its rounds
    async with dashboard_hive(tmp_path, web_pm) as running:
        yield running


async def test_an_idle_stream_gets_keepalive_comments(quick_keepalive_hive):
    with trio.fail_after(20):
        async with operator(quick_keepalive_hive).sse("/api/events") as stream:
            await read_until_live(stream)
            message = await anext(stream)
    assert message.comments == ["keepalive"]
    assert message.data == ""


@asynccontextmanager
async def chunked(hive, path="/api/events", headers=None):
    """A stream read as the server wrote it: ``await next_write()`` gives each write's bytes (one HTTP chunk)."""
    async with operator(hive)._open("GET", path, {"Accept": "text/event-stream", **(headers or {})}, None) as (
        stream,
        connection,
        response,
    ):
        assert response.status_code == 200

        async def next_write():
            data = b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    data += bytes(event.data)
                    if event.chunk_end and data != KEEPALIVE:
                        return data
                    if event.chunk_end:
                        data = b""
                else:
                    raise AssertionError(f"the stream ended: {event!r}")

        while not (await next_write()).endswith(LIVE):
            pass
        yield next_write


async def test_every_stream_writes_the_same_bytes_in_order_and_what_arrived_together_at_once(hive):
    with trio.fail_after(30):
        async with chunked(hive) as one, chunked(hive) as two, chunked(hive) as three:
            streams = [one, two, three]
            published, writes = [], [[] for _ in streams]
            for burst in (1, 3, 2, 5):
                # A burst is published with no pause between its events: they arrive together.
                events = [hive.events.publish("worker", "note", text=f"{burst}.{n}") for n in range(burst)]
                published += events
                for index, next_write in enumerate(streams):
                    writes[index].append(await next_write())
                await trio.sleep(0.05)
    expected = [
        b"".join(encode(event) for event in published[end - size : end])
        for size, end in ((1, 1), (3, 4), (2, 6), (5, 11))
    ]
    assert writes == [expected] * 3


async def test_the_feed_encodes_each_event_once_for_every_stream(hive):
    feed = dashboard_of(hive).feed
    listeners = [feed.listen(concerns(None)), feed.listen(concerns("worker"))]
    try:
        with trio.fail_after(10):
            events = [hive.events.publish("worker", "note", text=f"n{n}") for n in range(3)]
            batches = [await listener.wait_batch() for listener in listeners]
    finally:
        feed.listeners.difference_update(listeners)
    assert [[event_id for event_id, _ in batch] for batch in batches] == [[event.id for event in events]] * 2
    assert all(mine is theirs for (_, mine), (_, theirs) in zip(*batches, strict=True))  # the same bytes object
    assert b"".join(chunk for _, chunk in batches[0]) == b"".join(encode(event) for event in events)


async def test_a_resumed_stream_writes_the_missed_events_in_one_go_then_live_ones(hive):
    with trio.fail_after(20):
        async with chunked(hive) as next_write:
            first = hive.events.publish("worker", "note", text="seen")
            assert await next_write() == encode(first)
        missed = [hive.events.publish("worker", "note", text=f"missed {n}") for n in range(3)]
        async with operator(hive)._open(
            "GET", "/api/events", {"Accept": "text/event-stream", "Last-Event-ID": str(first.id)}, None
        ) as (stream, connection, _):
            body = b""
            while not body.endswith(LIVE):
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
    assert body.endswith(b"".join(encode(event) for event in missed) + LIVE)


async def test_a_bad_last_event_id_is_refused(hive):
    with trio.fail_after(10):
        reply = await operator(hive).get("/api/events", headers={"Last-Event-ID": "yesterday"})
    assert reply.status == 400
    assert "Last-Event-ID must be an event id" in reply.json()["error"]
