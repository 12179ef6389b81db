"""SSE streams: replay, the live marker, Last-Event-ID resumption without gaps or repeats."""

from __future__ import annotations

import trio
from hyperhive_web import dashboard_of
from webkit import operator

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


async def test_an_idle_stream_gets_keepalive_comments(hive, monkeypatch):
    monkeypatch.setattr("hyperhive_web.stream.KEEPALIVE_SECONDS", 0.2)
    with trio.fail_after(20):
        async with operator(hive).sse("/api/events") as stream:
            await read_until_live(stream)
            message = await anext(stream)
    assert message.comments == ["keepalive"]
    assert message.data == ""


async def test_a_bad_last_event_id_is_refused(hive):
    with trio.fail_after(10):
        reply = await operator(hive).get("/api/events", headers={"Last-Event-ID": "yesterday"})
    assert reply.status == 400
    assert "Last-Event-ID must be an event id" in reply.json()["error"]
