"""Server-sent event streams of the hive's live events, resumable with ``Last-Event-ID``.

A stream first replays what the client has not seen (after its ``Last-Event-ID``,
after ``?after=ID``, or the newest ``?tail=N`` of an agent's history), then sends
``event: live``, then live events as they happen. Every event carries its id, so the
browser's automatic reconnect resumes exactly where it stopped: no gap, no repeat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio
from quart import Response, make_response

from hyperhive_core.events import Event, SubscriptionDropped

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 2000
LIVE = b"event: live\ndata: {}\n\n"


def encode(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {event.to_json()}\n\n".encode()


def concerns(agent: str | None) -> Callable[[Event], bool]:
    """Which events an agent's stream carries: its own, and the messages sent to it."""
    if agent is None:
        return lambda event: True
    return lambda event: event.agent == agent or (event.type == "message_sent" and event.data.get("to") == agent)


async def event_stream(
    hive: Hive, agent: str | None, *, after_id: int | None = None, tail: int | None = None
) -> AsyncIterator[bytes]:
    """The SSE body: replay, the ``live`` marker, then live events until the client leaves.

    :param agent: one agent's stream, or ``None`` for the whole hive.
    :param after_id: replay everything after this event id (takes precedence over ``tail``).
    :param tail: replay the newest ``tail`` events of ``agent``'s own history.
    """
    wanted = concerns(agent)
    yield f"retry: {RETRY_MS}\n\n".encode()
    replay: list[Event] = []
    if after_id is not None:
        replay = await hive.events.history(None, after_id=after_id)
        resume_after = replay[-1].id if replay else after_id
    else:
        newest = await hive.events.history(None, limit=1)
        if tail:
            replay = await hive.events.history(agent, limit=tail)
        resume_after = max([newest[-1].id if newest else 0, *(event.id for event in replay[-1:])])
    for event in replay:
        if wanted(event):
            yield encode(event)
    yield LIVE
    # The subscription starts where the replay ended: whatever happened since comes first.
    async with hive.events.subscribe(None, after_id=resume_after) as subscription:
        events = aiter(subscription)
        while True:
            event = None
            with trio.move_on_after(KEEPALIVE_SECONDS):
                try:
                    event = await anext(events)
                except (StopAsyncIteration, SubscriptionDropped):
                    return  # the browser reconnects with Last-Event-ID and replays the rest
            if event is None:
                yield b": keepalive\n\n"
            elif wanted(event):
                yield encode(event)


async def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = await make_response(
        body,
        200,
        {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # a stream lasts as long as the page is open
    return response
