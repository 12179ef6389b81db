"""Server-sent event streams of the hive's live events, resumable with ``Last-Event-ID``.

A stream first replays what the client has not seen (after its ``Last-Event-ID``,
after ``?after=ID``, or the newest ``?tail=N`` of an agent's history), then sends
``event: live``, then live events as they happen. Every event carries its id, so the
browser's automatic reconnect resumes exactly where it stopped: no gap, no repeat.

One ``LiveFeed`` per dashboard holds the only subscription to the event bus and
hands each event, encoded once, to every open stream: every stream writes the same
bytes. The feed hands on every event that arrived together before any stream runs,
and a stream sends whatever piled up since its last write in one chunk, so a burst,
or a daemon too busy to keep up, costs one write per stream rather than one per
event. A write is the cost that grows with the streams (docs/dashboard.md#performance):
nothing else is done per stream and event, not even a timer; one keepalive round
for all streams finds the idle ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio
from quart import Response

from hyperhive_core import Event, SubscriptionDropped

if TYPE_CHECKING:
    from hyperhive_core import Hive

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 2000
LIVE = b"event: live\ndata: {}\n\n"
KEEPALIVE = b": keepalive\n\n"

Wanted = Callable[[Event], bool]


def encode(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {event.to_json()}\n\n".encode()


def concerns(agent: str | None) -> Wanted:
    """Which events an agent's stream carries: its own, and the messages sent to it."""
    if agent is None:
        return lambda event: True
    return lambda event: event.agent == agent or (event.type == "message_sent" and event.data.get("to") == agent)


class Listener:
    """One open stream's share of the feed: events waiting to be written, and a wake-up."""

    def __init__(self, wanted: Wanted, limit: int) -> None:
        self.wanted = wanted
        self.limit = limit
        self.pending: list[tuple[int, bytes]] = []
        self.overflowed = False
        self.idle = True  # offered nothing since the last keepalive round
        self.keepalive = False
        self._wake = trio.Event()

    def offer(self, event: Event, chunk: bytes) -> None:
        if not self.wanted(event):
            return
        if len(self.pending) >= self.limit:
            self.overflowed = True  # a stalled client: it reconnects and resumes from history
        else:
            self.pending.append((event.id, chunk))
        self.idle = False
        self._wake.set()

    def nudge(self) -> None:
        """A keepalive round: a stream offered nothing since the last one writes a comment."""
        if self.idle:
            self.keepalive = True
            self._wake.set()
        self.idle = True

    async def wait_batch(self) -> list[tuple[int, bytes]]:
        """Everything offered since the last call; waits for at least one."""
        await self._wake.wait()
        self._wake = trio.Event()
        batch, self.pending = self.pending, []
        return batch


class LiveFeed:
    """The dashboard's single subscription to the event bus, fanned out to every stream."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.listeners: set[Listener] = set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive)
            await self._relay(task_status)
            nursery.cancel_scope.cancel()

    async def _relay(self, task_status: trio.TaskStatus[None]) -> None:
        started = False
        last_id: int | None = None
        while True:
            try:
                async with self.hive.events.subscribe(None, after_id=last_id) as subscription:
                    if not started:
                        task_status.started()
                        started = True
                    async for first in subscription:
                        for event in (first, *subscription.ready()):
                            last_id = event.id
                            chunk = encode(event)
                            for listener in self.listeners:
                                listener.offer(event, chunk)
                return
            except SubscriptionDropped:
                continue  # starved for a while: resubscribe, replaying what was missed

    async def _keep_alive(self) -> None:
        """Every ``KEEPALIVE_SECONDS``, a comment on each stream that was quiet since the last time."""
        while True:
            await trio.sleep(KEEPALIVE_SECONDS)
            for listener in self.listeners:
                listener.nudge()

    def listen(self, wanted: Wanted) -> Listener:
        listener = Listener(wanted, self.hive.events.settings.subscriber_buffer)
        self.listeners.add(listener)
        return listener


async def event_stream(
    hive: Hive, feed: LiveFeed, agent: str | None, *, after_id: int | None = None, tail: int | None = None
) -> AsyncIterator[bytes]:
    """The SSE body: replay, the ``live`` marker, then live events until the client leaves.

    :param agent: one agent's stream, or ``None`` for the whole hive.
    :param after_id: replay everything after this event id (takes precedence over ``tail``).
    :param tail: replay the newest ``tail`` events of ``agent``'s own history.
    """
    wanted = concerns(agent)
    # Listen before reading history: an event is then in one or the other, or both (sent once).
    listener = feed.listen(wanted)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        if after_id is not None:
            replay = [event for event in await hive.events.history(None, after_id=after_id) if wanted(event)]
        elif tail:
            replay = await hive.events.history(agent, limit=tail)
        else:
            replay = []
        replayed = {event.id for event in replay}
        newest_replayed = max(replayed, default=0)
        if replay:
            yield b"".join(encode(event) for event in replay)
        yield LIVE
        while True:
            batch = await listener.wait_batch()
            if listener.overflowed:
                return
            keepalive, listener.keepalive = listener.keepalive, False
            if replayed:
                batch = [(event_id, chunk) for event_id, chunk in batch if event_id not in replayed]
                if batch and batch[-1][0] > newest_replayed:
                    replayed = set()  # events come in id order: nothing replayed can follow
            if batch:
                yield b"".join(chunk for _, chunk in batch)
            elif keepalive:
                yield KEEPALIVE
    finally:
        feed.listeners.discard(listener)


async def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = Response(
        body, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    response.timeout = None  # a stream lasts as long as the page is open
    return response
