"""Crash bursts: each agent's crashes grouped, stored, and reported to the manager once per burst.

A burst starts with a crash and lasts while the next crash of the same agent comes
within ``[crashwatch] burst_seconds`` of the previous one. The manager hears of a
burst's first crash at once; if more crashes followed, one follow-up with the total
is sent when the burst ends (no crash for ``burst_seconds``). A restart loop thus
costs the manager two messages, however long it runs.

``crashed`` runs in the reporter's task (the agent's harness, or the D-Bus watcher)
and never waits; ``serve``, a hive service, does the storing and the sending.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core import iso_utc
from hyperhive_crashwatch import records
from hyperhive_crashwatch.config import CrashwatchSection

if TYPE_CHECKING:
    from hyperhive_core import ContainerEvent, Hive

EVENT = "container_crash"
LINE_CHARS = 500
"""A log line longer than this is cut: the report must stay readable."""


@dataclass
class Burst:
    """One agent's crashes in a row. Times are wall-clock; ``ends_at`` is on trio's clock."""

    agent: str
    first_at: float
    last_at: float
    count: int = 0
    detail: str = ""
    """The last crash's exit status or unit result."""
    log_tail: tuple[str, ...] = ()
    """The last crash's log lines, bounded."""
    reported: int = 0
    """How many of the crashes the manager has been told about."""
    ends_at: float = math.inf
    id: int | None = None
    stored: dict[str, Any] | None = None
    """The row as last written, to skip writes that change nothing."""

    def row(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "count": self.count,
            "detail": self.detail,
            "log_tail": json.dumps(list(self.log_tail)),
            "reported": self.reported,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], ends_at: float) -> Burst:
        burst = cls(
            row["agent"],
            row["first_at"],
            row["last_at"],
            row["count"],
            row["detail"],
            tuple(json.loads(row["log_tail"])),
            row["reported"],
            ends_at,
            row["id"],
        )
        burst.stored = burst.row()
        return burst


def bounded_log(lines: Sequence[str], keep: int) -> tuple[str, ...]:
    """The last ``keep`` lines, each cut to ``LINE_CHARS``."""
    kept = lines[-keep:] if keep else ()
    return tuple(line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "…" for line in kept)


class Crashwatch:
    """The hive's crash bursts; ``load`` it once the store is open, run ``serve`` as a service."""

    def __init__(self, hive: Hive, settings: CrashwatchSection, bursts: Iterable[Burst] = ()) -> None:
        self.hive = hive
        self.settings = settings
        self._open: dict[str, Burst] = {}
        self._ended: list[Burst] = []
        """Bursts over, whose follow-up may still be due; oldest first."""
        self._changed = trio.Event()
        for burst in bursts:
            self._track(burst)

    @classmethod
    async def load(cls, hive: Hive) -> Crashwatch:
        """Resume what a restart interrupted: bursts still open, and reports not yet sent."""
        settings = hive.config.section("crashwatch", CrashwatchSection)
        wall, now = time.time(), trio.current_time()
        rows = await hive.store.read(partial(records.unfinished, wall - settings.burst_seconds))
        ends = (now + row["last_at"] + settings.burst_seconds - wall for row in rows)
        return cls(hive, settings, map(Burst.from_row, rows, ends))

    def in_burst(self, agent: str) -> bool:
        """Whether ``agent`` crashed less than ``burst_seconds`` ago."""
        burst = self._open.get(agent)
        return burst is not None and trio.current_time() < burst.ends_at

    def crashed(self, event: ContainerEvent) -> None:
        """Count a crash into its agent's burst; ``serve`` stores and reports it. Never waits."""
        now, wall = trio.current_time(), time.time()
        burst = self._open.get(event.agent)
        if burst is None or now >= burst.ends_at:
            burst = Burst(event.agent, first_at=wall, last_at=wall)
            self._track(burst)
        burst.count += 1
        burst.last_at = wall
        burst.detail = event.detail or "no exit status reported"
        burst.log_tail = bounded_log(event.log_tail, self.settings.log_lines)
        burst.ends_at = now + self.settings.burst_seconds
        self.hive.events.publish(
            event.agent,
            "crashwatch.crash",
            count=burst.count,
            detail=burst.detail,
            first_at=burst.first_at,
            burst_seconds=self.settings.burst_seconds,
        )
        self._changed.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store and report crashes as they come, and close each burst when its time passes."""
        task_status.started()
        while True:
            # Renewed before catching up, so a crash meanwhile is never missed.
            self._changed = trio.Event()
            await self._catch_up()
            with trio.move_on_at(min((burst.ends_at for burst in self._open.values()), default=math.inf)):
                await self._changed.wait()

    async def forget(self, agent: str) -> None:
        """``agent`` was purged: drop its bursts, stored and in memory, with no follow-up for them."""
        self._open.pop(agent, None)
        self._ended = [burst for burst in self._ended if burst.agent != agent]
        await self.hive.store.write(partial(records.forget, agent))

    async def save(self) -> None:
        """Store what ``serve`` did not get to, so a restart still reports it (at shutdown)."""
        for burst in [*self._ended, *self._open.values()]:
            await self._store(burst)

    # -- internals ---------------------------------------------------------------

    def _track(self, burst: Burst) -> None:
        """Make ``burst`` its agent's open one; the one it replaces has ended."""
        previous = self._open.get(burst.agent)
        if previous is not None:
            self._ended.append(previous)
        self._open[burst.agent] = burst

    async def _catch_up(self) -> None:
        now = trio.current_time()
        for agent, burst in list(self._open.items()):
            if burst.ends_at <= now:
                self._ended.append(self._open.pop(agent))
        while self._ended:
            burst = self._ended[0]
            await self._report(burst, over=True)
            self._ended.pop(0)
            self.hive.events.publish(
                burst.agent, "crashwatch.burst_ended", count=burst.count, first_at=burst.first_at, last_at=burst.last_at
            )
        for burst in list(self._open.values()):
            await self._report(burst, over=False)

    async def _report(self, burst: Burst, *, over: bool) -> None:
        """Store the burst; tell the manager of its start, and of its total once it is over."""
        await self._store(burst)
        if burst.reported and not (over and burst.count > burst.reported):
            return
        count, fields = burst.count, self._fields(burst, over)
        # The manager's own crashes go to its inbox too: it reads them once it is back.
        await self.hive.notify(self.hive.agents.manager, EVENT, **fields)
        burst.reported = count
        await self._store(burst)

    def _fields(self, burst: Burst, over: bool) -> dict[str, Any]:
        window = f"{self.settings.burst_seconds:g}s"
        if over:
            note = f"burst over: {burst.count} crash(es), then none for {window}"
        else:
            note = f"a crash burst began; crashes each within {window} of the last are counted, reported once they stop"
        return {
            "agent": burst.agent,
            "status": burst.detail,
            "log": list(burst.log_tail),
            "count": burst.count,
            "first_at": iso_utc(burst.first_at),
            "last_at": iso_utc(burst.last_at),
            "burst": "over" if over else "ongoing",
            "note": note,
        }

    async def _store(self, burst: Burst) -> None:
        row = burst.row()
        if row == burst.stored:
            return
        # Not fsynced: the report that follows is a durable commit and takes it to disk.
        burst.id = await self.hive.store.write(
            partial(records.save, row, burst.id, self.settings.history_per_agent), durable=False
        )
        burst.stored = row
