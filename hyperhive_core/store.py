"""The hive's one sqlite file: a single writer, concurrent readers, owned migrations.

Every write runs on one connection, one at a time, in a worker thread, so trio tasks
never block the event loop and never interleave transactions. Reads use their own
connection; in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TypeVar

import sqlite_utils
import trio

from hyperhive_core.errors import DiskFull, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Migration = Callable[[sqlite_utils.Database], None]

MIGRATIONS_TABLE = "_migrations"
CORE_OWNER = "core"


# How long a write waits for a lock another connection holds (a backup's read, the checkpoint).
BUSY_TIMEOUT_MS = 30_000
# At startup only this long: a lock still held then belongs to another process.
STARTUP_LOCK_WAIT_MS = 5_000


def connect(path: Path) -> sqlite_utils.Database:
    """Open ``path`` in WAL mode with ``synchronous=FULL``: a commit that returned is on disk."""
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot open database {path}: {exc}; check the state dir's permissions") from None
    except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: no permission fixes that
        raise StoreError(
            f"cannot open database {path}: {exc}; restore it from a backup (docs/operations.md#restore)"
        ) from None
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return sqlite_utils.Database(conn)


class Store:
    """The hive database at ``path``; use ``write`` and ``read`` from trio tasks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = connect(path)
        self._reader = connect(path)
        self._write_lock = trio.CapacityLimiter(1)
        self._read_lock = trio.CapacityLimiter(1)

    async def write(self, fn: Callable[[sqlite_utils.Database], T], *, durable: bool = True) -> T:
        """Run ``fn(db)`` in one transaction on the writer; return its result.

        :param durable: ``False`` skips the fsync for a write that may be lost in a
            power cut without harm (a lease, event history); it still commits in
            order, and the next durable commit makes it durable too.
        """
        return await trio.to_thread.run_sync(self.write_sync, fn, durable, limiter=self._write_lock)

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn(db)`` on the read connection; it sees the last committed state."""
        return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_lock)

    def write_sync(self, fn: Callable[[sqlite_utils.Database], T], durable: bool = True) -> T:
        """``write`` for code already off the event loop (startup, the writer thread).

        :raises DiskFull: the filesystem is full; the transaction was rolled back.
        :raises StoreError: another process holds the database locked past the busy timeout.
        """
        try:
            if durable:
                with self._writer.atomic():
                    return fn(self._writer)
            self._writer.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._writer.atomic():
                    return fn(self._writer)
            finally:
                self._writer.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL:
                raise DiskFull(f"the disk holding {self.path} is full; free space on that filesystem") from exc
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreError(self._locked()) from exc
            raise

    def _locked(self) -> str:
        return f"database {self.path} is locked by another process; stop it (`fuser -v {self.path}` names it)"

    async def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so the WAL file stays small.

        Runs on the writer, outside any transaction (a checkpoint cannot run inside one).
        """
        await trio.to_thread.run_sync(self._checkpoint, limiter=self._write_lock)

    def _checkpoint(self) -> None:
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def migrate(self, migrations: Mapping[str, Iterable[Migration]]) -> list[str]:
        """Apply each owner's pending migrations in order; return what ran.

        Each migration runs in its own transaction with its record, so a failure
        leaves the database at the last good step. Tables an owner other than core
        creates must be prefixed with the owner's name.

        :raises StoreError: another process holds the database locked, or a newer
            version migrated it (a step of a known owner that this version lacks).
        """
        self._check_unlocked()
        self.write_sync(
            lambda db: db.table(MIGRATIONS_TABLE).create(
                {"owner": str, "name": str, "applied_at": float}, pk=("owner", "name"), if_not_exists=True
            )
        )
        applied = {(row["owner"], row["name"]) for row in self._writer[MIGRATIONS_TABLE].rows}
        migrations = {owner: list(steps) for owner, steps in migrations.items()}
        # An owner not loaded now (a plugin left out of [hive] plugins) keeps its tables untouched.
        unknown = sorted(
            f"{owner}:{name}"
            for owner, name in applied
            if owner in migrations and name not in {step.__name__ for step in migrations[owner]}
        )
        if unknown:
            raise StoreError(
                f"database {self.path} was migrated by a newer hyperhive (migration {unknown[0]} is unknown here); "
                "run that version, or restore the backup taken before the upgrade (docs/operations.md#upgrade)"
            )
        ran = []
        for owner, steps in migrations.items():
            for step in steps:
                if (owner, step.__name__) in applied:
                    continue
                self.write_sync(partial(self._apply, owner=owner, step=step))
                ran.append(f"{owner}:{step.__name__}")
                log.info("applied migration %s:%s", owner, step.__name__)
        return ran

    def _check_unlocked(self) -> None:
        """Fail at once, not after the busy timeout, when another process holds the database locked."""
        conn = self._writer.conn
        conn.execute(f"PRAGMA busy_timeout={STARTUP_LOCK_WAIT_MS}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            raise StoreError(f"{self._locked()} and start again") from None
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @staticmethod
    def _apply(db: sqlite_utils.Database, owner: str, step: Migration) -> None:
        before = set(db.table_names())
        try:
            step(db)
        except Exception as exc:
            raise StoreError(f"migration {owner}:{step.__name__} failed: {exc}") from exc
        foreign = sorted(
            name for name in set(db.table_names()) - before if owner != CORE_OWNER and not name.startswith(f"{owner}_")
        )
        if foreign:
            raise StoreError(
                f"migration {owner}:{step.__name__} created table {foreign[0]!r}; "
                f"tables owned by {owner!r} must be named {owner}_..."
            )
        db.table(MIGRATIONS_TABLE).insert({"owner": owner, "name": step.__name__, "applied_at": time.time()})

    def close(self) -> None:
        self._reader.conn.close()
        self._writer.conn.close()
