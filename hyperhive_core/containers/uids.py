"""Each agent's own unprivileged host uid, from a configured range, recorded in the hive db.

The uid doubles as the agent's gid. A number stays with its agent across restarts
(its state dir is owned by it) until the agent is purged.
"""

from __future__ import annotations

import pwd

import sqlite_utils

from hyperhive_core.errors import HyperhiveError
from hyperhive_core.store import Store

TABLE = "agent_uids"


def m005_agent_uids(db: sqlite_utils.Database) -> None:
    """Core migration: which host uid each agent runs as."""
    db[TABLE].create({"agent": str, "uid": int}, pk="agent", not_null={"uid"})
    db[TABLE].create_index(["uid"], unique=True)


class UidRangeExhausted(HyperhiveError):
    """Every uid in the configured range is taken."""


class AgentUids:
    """Allocates and remembers agents' uids in ``range(first, first + count)``."""

    def __init__(self, store: Store, first: int, count: int) -> None:
        self.store = store
        self.first = first
        self.count = count

    async def allocate(self, agent: str) -> int:
        """The agent's uid: the one on record, else the lowest free one (then recorded)."""
        return await self.store.write(lambda db: self._allocate(db, agent))

    async def lookup(self, agent: str) -> int | None:
        """The agent's recorded uid, if it has one."""
        return await self.store.read(lambda db: _recorded(db, agent))

    async def release(self, agent: str) -> None:
        """Forget the agent's uid, so another agent may get it (after a purge)."""
        await self.store.write(lambda db: db[TABLE].delete_where("agent = ?", [agent]))

    def _allocate(self, db: sqlite_utils.Database, agent: str) -> int:
        recorded = _recorded(db, agent)
        if recorded is not None:
            return recorded
        taken = {row["uid"] for row in db[TABLE].rows_where(select="uid")}
        for uid in range(self.first, self.first + self.count):
            # A uid with a host account may own files or processes an agent must not touch.
            if uid not in taken and not _has_account(uid):
                db[TABLE].insert({"agent": agent, "uid": uid})
                return uid
        raise UidRangeExhausted(
            f"all {self.count} agent uids from {self.first} are taken; raise [bwrap] uid_range_size "
            "or purge agents you no longer need"
        )


def _recorded(db: sqlite_utils.Database, agent: str) -> int | None:
    row = next(db[TABLE].rows_where("agent = ?", [agent], select="uid"), None)
    return None if row is None else row["uid"]


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
