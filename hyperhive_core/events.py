"""The live event bus: what each agent is doing, as it happens, with replayable history.

``publish`` never waits: it hands the event to every subscriber's bounded queue and
to a background writer that persists events in batches. A subscriber whose queue
is full is dropped and told so, rather than slowing the hive down; it can
resubscribe from the last id it saw, and the per-agent history (a bounded ring in
the ``events`` table) fills the gap. That is how the dashboard resumes an SSE
stream from ``Last-Event-ID``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast, get_args

import sqlite_utils
import trio

from hyperhive_core.config import option
from hyperhive_core.errors import ConfigError, DiskFull, HyperhiveError
from hyperhive_core.names import RESERVED, check_agent_name
from hyperhive_core.store import Store

log = logging.getLogger(__name__)

EventType = Literal[
    "turn_start",
    "turn_end",
    "assistant_text",
    "tool_use",
    "tool_result",
    "permission_denied",
    "note",
    "state_change",
    "message_sent",
    "message_dead",
    "message_requeued",
    "message_dropped",
    "approval_requested",
    "approval_resolved",
    "egress_denied",
    "error",
]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))
# Plugins publish their own event types, namespaced: "questions.asked".
PLUGIN_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")

# Events waiting to be persisted, at most; beyond it the oldest are only live.
PENDING_LIMIT = 10_000


@dataclass
class EventsSection:
    """The live event bus: history kept for replay, and subscriber queues."""

    history_per_agent: int = option(1000, help="Events kept per agent for replay (a ring: oldest go first).")
    subscriber_buffer: int = option(
        1000, help="Events a subscriber may fall behind by before it is dropped and must resubscribe."
    )

    def __post_init__(self) -> None:
        for key in ("history_per_agent", "subscriber_buffer"):
            if getattr(self, key) < 1:
                raise ConfigError(f"[events] {key} must be at least 1, not {getattr(self, key)}")


@dataclass(frozen=True, slots=True)
class Event:
    """One live event. Ids only grow, across restarts too."""

    id: int
    agent: str
    type: EventType
    data: Mapping[str, Any]
    at: float

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "agent": self.agent, "type": self.type, "data": self.data, "at": self.at})


class SubscriptionDropped(HyperhiveError):
    """The subscriber fell too far behind; resubscribe with the last id it saw."""


class Subscription:
    """Events for one agent (or all), replayed history first; iterate with ``async for``.

    Iteration raises ``SubscriptionDropped`` after the last buffered event if the
    subscriber fell behind.
    """

    def __init__(self, agent: str | None, buffer: int) -> None:
        self.agent = agent
        self.buffer = buffer
        self.dropped = False
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        self._replay: deque[Event] = deque()
        self._last_id = 0

    def _offer(self, event: Event) -> bool:
        """Queue ``event`` without waiting; on a full queue, drop this subscriber."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped = True
            self._send.close()
            return False
        return True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._replay:
            await trio.lowlevel.checkpoint()
            event = self._replay.popleft()
            self._last_id = event.id
            return event
        while True:
            try:
                event = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if self.dropped:
                    raise SubscriptionDropped(
                        f"event subscriber for {self.agent or 'all agents'} fell more than {self.buffer} events "
                        f"behind and was dropped; resubscribe from event {self._last_id}"
                    ) from None
                raise StopAsyncIteration from None
            if self._fresh(event):
                return event

    def ready(self) -> list[Event]:
        """The events already waiting, taken at once without waiting: those that arrived with the last one.

        A fan-out that hands them on together lets each of its readers write them in one go.
        """
        events = []
        while self._replay:
            event = self._replay.popleft()
            self._last_id = event.id
            events.append(event)
        while True:
            try:
                event = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return events  # a dropped subscriber hears of it from the next ``async for`` step
            if self._fresh(event):
                events.append(event)

    def _fresh(self, event: Event) -> bool:
        """Whether ``event`` is news, noting it as the last seen if so: replay may have delivered it already."""
        if event.id <= self._last_id:
            return False
        self._last_id = event.id
        return True

    def _close(self) -> None:
        self._send.close()
        self._receive.close()


class EventBus:
    """Publishes live events; run ``serve`` in a nursery to persist history."""

    def __init__(self, store: Store, settings: EventsSection | None = None) -> None:
        self.store = store
        self.settings = settings or EventsSection()
        self._subscribers: set[Subscription] = set()
        self._last_id = 0
        self._pending: deque[tuple[Event, str]] = deque(maxlen=PENDING_LIMIT)
        self._inflight: list[tuple[Event, str]] = []
        self._has_pending = trio.Event()
        self._behind = False
        self.forward: Callable[[Event], None] | None = None
        """Where this host's own events also go (the other hosts of a hive that spans several); never waits."""

    def publish(self, agent: str, type: EventType | str, /, **data: Any) -> Event:
        """Send an event to subscribers now and queue it for history; never waits.

        ``agent`` and ``type`` are positional, so ``data`` may use those names too.

        :param agent: whose event it is (an agent, ``operator`` or ``hive``).
        :param type: a core event type, or a plugin's own as ``<plugin>.<event>``.
        :param data: JSON-serializable details.
        """
        event = self._publish(agent, type, data)
        if self.forward is not None:
            self.forward(event)
        return event

    def merge(self, host: str, agent: str, type: str, data: Mapping[str, Any]) -> Event:
        """Publish another host's event here, tagged with ``data["host"]``; it goes no further."""
        return self._publish(agent, type, {**data, "host": host})

    def _publish(self, agent: str, type: EventType | str, data: Mapping[str, Any]) -> Event:
        if type not in EVENT_TYPES and not PLUGIN_EVENT_TYPE.fullmatch(type):
            raise ValueError(
                f"unknown event type {type!r}; use one of {', '.join(sorted(EVENT_TYPES))}, "
                "or a plugin's own type named '<plugin>.<event>'"
            )
        if agent not in RESERVED:
            check_agent_name(agent)
        text = json.dumps(data)  # fails here, in the publisher, if data can't be stored
        # Microsecond clock ids stay ahead of ids a crash kept from being persisted.
        self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        event = Event(self._last_id, agent, cast(EventType, type), data, time.time())
        dropped = [sub for sub in self._subscribers if sub.agent in (None, agent) and not sub._offer(event)]
        for sub in dropped:
            self._subscribers.discard(sub)
            log.warning("dropped a slow event subscriber for %s", sub.agent or "all agents")
        if len(self._pending) == PENDING_LIMIT and not self._behind:
            self._behind = True  # warn once per flush, not once per event
            log.warning("the event history writer is behind; the oldest unsaved events will be live only")
        self._pending.append((event, text))
        self._has_pending.set()
        return event

    @asynccontextmanager
    async def subscribe(self, agent: str | None = None, *, after_id: int | None = None) -> AsyncIterator[Subscription]:
        """Subscribe to ``agent``'s events (all agents if ``None``).

        :param after_id: replay history after this event id first (the SSE
            ``Last-Event-ID``); ``None`` starts with the next live event.
        """
        subscription = Subscription(agent, self.settings.subscriber_buffer)
        # Subscribe before reading history, so nothing falls between the two.
        self._subscribers.add(subscription)
        try:
            if after_id is not None:
                subscription._replay.extend(await self.history(agent, after_id=after_id))
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription._close()

    async def history(self, agent: str | None = None, *, after_id: int = 0, limit: int | None = None) -> list[Event]:
        """Stored events after ``after_id``, oldest first; the newest ``limit`` if given."""
        unsaved = {event.id: event for event, _ in (*self._inflight, *self._pending) if agent in (None, event.agent)}
        saved = await self.store.read(partial(_read_events, agent, after_id, limit))
        merged = sorted({**{event.id: event for event in saved}, **unsaved}.values(), key=lambda event: event.id)
        merged = [event for event in merged if event.id > after_id]
        return merged if limit is None else merged[-limit:]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Persist published events in batches until cancelled, then flush what is left."""
        self._last_id = max(self._last_id, await self.store.read(_max_event_id))
        task_status.started()
        try:
            while True:
                await self._has_pending.wait()
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def _flush(self) -> None:
        self._inflight, self._pending = list(self._pending), deque(maxlen=PENDING_LIMIT)
        self._has_pending = trio.Event()
        self._behind = False
        if not self._inflight:
            return
        try:
            # Not fsynced: history is a convenience, and the next durable commit
            # (a message) takes it to disk anyway.
            await self.store.write(
                partial(_save_events, self._inflight, self.settings.history_per_agent), durable=False
            )
        except trio.Cancelled:
            self._pending.extendleft(reversed(self._inflight))  # not written: the final flush takes them
            raise
        except DiskFull as exc:  # one line: the broker's log already says what to do
            log.error("could not persist %d event(s): %s; they were delivered live only", len(self._inflight), exc)
        except Exception:
            log.exception("could not persist %d event(s); they were delivered live only", len(self._inflight))
        finally:
            self._inflight = []


# -- SQL, run on the store's threads ---------------------------------------------


def m002_events(db: sqlite_utils.Database) -> None:
    """Per-agent event history, trimmed to a ring on every write."""
    db.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            agent TEXT NOT NULL,
            type TEXT NOT NULL,
            data TEXT NOT NULL,
            at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX events_by_agent ON events (agent, id)")


def _save_events(events: list[tuple[Event, str]], keep: int, db: sqlite_utils.Database) -> None:
    db.conn.executemany(
        "INSERT INTO events (id, agent, type, data, at) VALUES (?, ?, ?, ?, ?)",
        [(event.id, event.agent, event.type, text, event.at) for event, text in events],
    )
    for agent in {event.agent for event, _ in events}:
        db.execute(
            "DELETE FROM events WHERE agent = ? AND id <= ("
            "  SELECT id FROM events WHERE agent = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (agent, agent, keep),
        )


def _read_events(agent: str | None, after_id: int, limit: int | None, db: sqlite_utils.Database) -> list[Event]:
    where, params = ("id > ?", [after_id]) if agent is None else ("agent = ? AND id > ?", [agent, after_id])
    rows = db.execute(
        f"SELECT id, agent, type, data, at FROM events WHERE {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, -1 if limit is None else limit),
    ).fetchall()
    return [Event(id_, name, type_, json.loads(data), at) for id_, name, type_, data, at in reversed(rows)]


def _max_event_id(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
