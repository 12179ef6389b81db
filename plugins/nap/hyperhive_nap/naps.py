"""Naps: who sleeps until when, kept in the store so a nap outlives a restart."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlite_utils
import trio

from hyperhive_core import HyperhiveError, State, iso_utc, option

if TYPE_CHECKING:
    from hyperhive_core import Hive

TABLE = "nap_naps"


@dataclass
class NapSection:
    """Naps: an agent parks itself until a chosen time."""

    max_seconds: int = option(3600, help="The longest nap an agent may take, in seconds.")

    def __post_init__(self) -> None:
        # Core's config loader names the file and [nap] before it (docs/plugins.md).
        if self.max_seconds < 1:
            raise ValueError(f"max_seconds must be at least 1, not {self.max_seconds}")


class Naps:
    """The hive's naps; ``load`` it once the store is open."""

    def __init__(self, hive: Hive, wake_times: dict[str, float]) -> None:
        self.hive = hive
        self.settings: NapSection = hive.config.section("nap", NapSection)
        self._wake_at = wake_times
        self._woken: dict[str, trio.Event] = {}

    @classmethod
    async def load(cls, hive: Hive) -> Naps:
        """The naps recorded before a restart, still to be slept.

        A wall clock set back while the hive was down would stretch a nap by as much;
        none lasts longer from now than it was asked to.
        """
        rows = await hive.store.read(lambda db: list(db.table(TABLE).rows))
        return cls(hive, {row["agent"]: _bounded_wake_time(row, time.time()) for row in rows})

    def wake_time(self, agent: str) -> float | None:
        """When ``agent`` wakes (seconds since the epoch), or ``None`` if it is not napping."""
        return self._wake_at.get(agent)

    async def start(self, agent: str, seconds: int) -> float:
        """Record that ``agent`` sleeps ``seconds`` once its turn ends; return the wake time.

        :raises HyperhiveError: ``seconds`` is below 1 or over ``[nap] max_seconds``.
        """
        limit = self.settings.max_seconds
        if not 1 <= seconds <= limit:
            raise HyperhiveError(
                f"nap seconds must be from 1 to {limit} ([nap] max_seconds), not {seconds}; "
                f"to rest longer, nap again when you wake"
            )
        wake_at = time.time() + seconds
        row = {"agent": agent, "wake_at": wake_at, "started_at": time.time()}
        # Known before it is stored: a /cancel meanwhile ends it (its delete is written after this).
        self._wake_at[agent] = wake_at
        await self.hive.store.write(lambda db: db.table(TABLE).upsert(row, pk="agent"))
        self.hive.events.publish(agent, "note", text=f"napping for {seconds}s, until {iso_utc(wake_at)}")
        self.hive.events.publish(agent, "nap.started", seconds=seconds, wake_at=wake_at)
        return wake_at

    async def wait(self, agent: str) -> None:
        """Hold ``agent``'s loop until its nap ends or the operator wakes it.

        Cancelling leaves the nap recorded, so a restart resumes it.
        """
        wake_at = self._wake_at.get(agent)
        if wake_at is None:
            return
        # Measured once against the wall clock, then slept on trio's clock.
        remaining = wake_at - time.time()
        if remaining > 0:
            woken = self._woken[agent] = trio.Event()
            self.hive.agents.set_state(agent, State.NAPPING, iso_utc(wake_at))
            try:
                with trio.move_on_after(remaining):
                    await woken.wait()
            finally:
                if self.hive.agents.get(agent).status.state is State.NAPPING:
                    self.hive.agents.set_state(agent, State.IDLE)
                if self._woken.get(agent) is woken:
                    del self._woken[agent]
        if self._wake_at.get(agent) == wake_at:  # not already ended by the operator
            await self._forget(agent)
            self.hive.events.publish(agent, "note", text="woke from a nap")
            self.hive.events.publish(agent, "nap.ended", how="woke")

    async def wake(self, agent: str) -> bool:
        """End ``agent``'s nap now; return whether it was napping (or about to)."""
        self.hive.agents.get(agent)  # an unknown name is an error, not a quiet no-op
        if agent not in self._wake_at:
            return False
        await self._forget(agent)
        if agent in self._woken:
            self._woken[agent].set()
        self.hive.events.publish(agent, "note", text="nap ended by the operator")
        self.hive.events.publish(agent, "nap.ended", how="woken by the operator")
        return True

    async def _forget(self, agent: str) -> None:
        self._wake_at.pop(agent, None)
        await self.hive.store.write(lambda db: db.table(TABLE).delete_where("agent = ?", [agent]))


def _bounded_wake_time(row: dict[str, float | None], now: float) -> float:
    """A stored nap's wake time, but no later than the nap's own length from ``now``."""
    wake_at, started_at = row["wake_at"], row["started_at"]
    assert wake_at is not None
    return wake_at if started_at is None else min(wake_at, now + wake_at - started_at)


def m001_naps(db: sqlite_utils.Database) -> None:
    db.table(TABLE).create({"agent": str, "wake_at": float, "started_at": float}, pk="agent", not_null={"wake_at"})
