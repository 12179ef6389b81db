"""Each agent's own unprivileged host uid, from a configured range, recorded in the hive db.

The uid doubles as the agent's gid. A number stays with its agent across restarts
(its state dir is owned by it) until the agent is purged.

Two hives on one host must not share uids, or one hive's agent could touch the other's
files. Each running hive claims its range in a host-wide registry, :data:`REGISTRY`:
one file per hive, locked (``flock``) for as long as the daemon lives, so a hive that
dies, however it dies, frees its range with its process. A hive whose range overlaps
a live claim refuses to start (:func:`claim_uid_range`).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import time
from pathlib import Path
from typing import IO, Any

import sqlite_utils

from hyperhive_core.containers.cgroups import hive_id
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.store import Store

TABLE = "agent_uids"
REGISTRY = Path("/run/hyperhive/uid-ranges")
"""Where running hives claim their uid ranges: ``<hive id>.claim`` each, and ``.lock``."""
# How long a hive waits for another one to finish checking and claiming (milliseconds, normally).
REGISTRY_WAIT = 10.0


def m005_agent_uids(db: sqlite_utils.Database) -> None:
    """Core migration: which host uid each agent runs as."""
    db.table(TABLE).create({"agent": str, "uid": int}, pk="agent", not_null={"uid"})
    db.table(TABLE).create_index(["uid"], unique=True)


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
        await self.store.write(lambda db: db.table(TABLE).delete_where("agent = ?", [agent]))

    def _allocate(self, db: sqlite_utils.Database, agent: str) -> int:
        recorded = _recorded(db, agent)
        if recorded is not None:
            return recorded
        taken = {row["uid"] for row in db[TABLE].rows_where(select="uid")}
        for uid in range(self.first, self.first + self.count):
            # A uid with a host account may own files or processes an agent must not touch.
            if uid not in taken and not _has_account(uid):
                db.table(TABLE).insert({"agent": agent, "uid": uid})
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


class UidRangeTaken(HyperhiveError):
    """Another running hive claims uids in this range, or this very state dir."""


class UidRangeClaim:
    """A running hive's claim on its uid range; it lasts while the file stays open and locked."""

    def __init__(self, path: Path, file: IO[str]) -> None:
        self.path = path
        # A file object: should the hive never call ``release``, its collection still drops the lock.
        self._file: IO[str] | None = file

    def release(self) -> None:
        """Give the range up (the daemon is stopping); doing it twice is harmless."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None


def claim_uid_range(first: int, count: int, state_dir: Path, registry: Path = REGISTRY) -> UidRangeClaim:
    """Claim ``range(first, first + count)`` for the hive at ``state_dir``, for as long as this
    process lives or until ``release``.

    One lock on the registry covers the check and the claim, so two hives starting at
    once cannot both pass the check.

    :raises UidRangeTaken: a live hive claims an overlapping range, or this state dir.
    :raises HyperhiveError: the registry cannot be written (the daemon is not root).
    """
    state_dir = state_dir.resolve()
    try:
        registry.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(registry / ".lock", "a")  # noqa: SIM115 - closed below, which unlocks
    except OSError as exc:
        raise HyperhiveError(
            f"cannot claim agent uids {_describe(first, count)} in {registry}: {exc.strerror}; the bwrap "
            "backend needs the daemon to run as root: run it as root, or set "
            '[hive] container_backend = "process" (no isolation)'
        ) from None
    with lock:
        _lock_within(lock, REGISTRY_WAIT, f"another hive has held {registry / '.lock'} for {REGISTRY_WAIT:g} s")
        for path in sorted(registry.glob("*.claim")):
            other = _live_claim(path)
            if other is None:
                continue
            if Path(other.get("state_dir", "")) == state_dir:
                raise UidRangeTaken(
                    f"a hive with the state dir {state_dir} is already running (pid {other['pid']}); "
                    "stop it first, or give this one another [hive] state_dir"
                )
            if _overlap(first, count, other):
                mine, theirs = _describe(first, count), _describe(other["first"], other["count"])
                raise UidRangeTaken(
                    f"agent uids {mine} overlap {theirs}, the uids of the running hive at {other.get('state_dir')} "
                    f"(pid {other['pid']}): its agents and these could touch each other's files; "
                    "give this hive a range apart from it with [bwrap] uid_range_start and uid_range_size"
                )
        path = registry / f"{hive_id(state_dir)}.claim"
        file = open(path, "w")  # noqa: SIM115 - the claim holds it open for the daemon's lifetime
        # No live hive holds it (checked above, under the registry lock): this never waits.
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        json.dump({"state_dir": str(state_dir), "pid": os.getpid(), "first": first, "count": count}, file)
        file.flush()
        return UidRangeClaim(path, file)


def _live_claim(path: Path) -> dict[str, Any] | None:
    """The claim in ``path`` if its hive still holds it; a dead hive's claim is removed."""
    try:
        file = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = file.read()
        else:
            path.unlink(missing_ok=True)  # its hive is gone
            return None
    try:
        claim = json.loads(text)
        if {type(claim.get(key)) for key in ("first", "count", "pid")} == {int}:
            return claim
    except (ValueError, AttributeError):
        pass
    raise UidRangeTaken(
        f"a running process holds the claim {path}, but it does not say which uids: {text[:200]!r}; "
        f"stop that process (fuser {path} names it)"
    )


def _overlap(first: int, count: int, other: dict[str, Any]) -> bool:
    return first < other["first"] + other["count"] and other["first"] < first + count


def _describe(first: int, count: int) -> str:
    return f"{first}-{first + count - 1}"


def _lock_within(file: IO[str], seconds: float, why: str) -> None:
    """``flock`` ``file`` exclusively, waiting at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise HyperhiveError(f"cannot claim agent uids: {why}") from None
            time.sleep(0.01)
