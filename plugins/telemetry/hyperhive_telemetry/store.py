"""The telemetry tables.

``telemetry_stats(agent, ts, key, value)`` holds every sample: one row per figure
per turn (written at turn end), and one per gauge per sampler tick. Retention
deletes old rows. ``telemetry_totals(agent, key, value)`` keeps the all-time sum of
every per-turn figure, never pruned, so Prometheus counters only ever grow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import sqlite_utils

STATS = "telemetry_stats"
TOTALS = "telemetry_totals"
HIVE = "hive"
"""The ``agent`` of hive-wide series (the approval queue)."""
DELETE_CHUNK = 5000


class Sample(NamedTuple):
    agent: str
    ts: float
    key: str
    value: float


def m001_stats(db: sqlite_utils.Database) -> None:
    db.table(STATS).create({"agent": str, "ts": float, "key": str, "value": float}, not_null={"agent", "ts", "key"})
    db.table(STATS).create_index(["agent", "key", "ts"])
    db.table(STATS).create_index(["ts"])  # retention
    db.table(TOTALS).create({"agent": str, "key": str, "value": float}, pk=("agent", "key"), not_null={"value"})


MIGRATIONS = [m001_stats]


def record(db: sqlite_utils.Database, samples: Iterable[Sample], *, add_to_totals: bool = False) -> None:
    """Store samples; per-turn ones (``add_to_totals``) also add to the all-time totals."""
    rows = [tuple(sample) for sample in samples]
    db.conn.executemany(f"INSERT INTO {STATS} (agent, ts, key, value) VALUES (?, ?, ?, ?)", rows)  # noqa: S608
    if add_to_totals:
        db.conn.executemany(
            f"INSERT INTO {TOTALS} (agent, key, value) VALUES (?, ?, ?) "  # noqa: S608
            "ON CONFLICT (agent, key) DO UPDATE SET value = value + excluded.value",
            [(agent, key, value) for agent, _ts, key, value in rows],
        )


def forget(db: sqlite_utils.Database, agent: str) -> None:
    """Delete every sample and total of ``agent`` (purged): no figure outlives it."""
    for table in (STATS, TOTALS):
        db.execute(f"DELETE FROM {table} WHERE agent = ?", [agent])  # noqa: S608


def prune(db: sqlite_utils.Database, before: float) -> int:
    """Delete up to one chunk of samples older than ``before``; return how many went."""
    cursor = db.execute(
        f"DELETE FROM {STATS} WHERE rowid IN (SELECT rowid FROM {STATS} WHERE ts < ? LIMIT ?)",  # noqa: S608
        [before, DELETE_CHUNK],
    )
    return cursor.rowcount


def query(
    db: sqlite_utils.Database,
    *,
    since: float,
    until: float | None = None,
    agents: Sequence[str] = (),
    keys: Sequence[str] = (),
) -> list[Sample]:
    """Samples with ``since <= ts`` (and ``ts <= until``), oldest first.

    :param agents: only these agents (all when empty).
    :param keys: only these keys (all when empty); ``tool:*`` matches every key
        starting with ``tool:``.
    """
    where: list[str] = ["ts >= ?"]
    params: list[str | float] = [since]
    if until is not None:
        where.append("ts <= ?")
        params.append(until)
    if agents:
        where.append(f"agent IN ({', '.join('?' * len(agents))})")
        params += agents
    if keys:
        matches = []
        for key in keys:
            if key.endswith("*"):
                # A range, not LIKE: tool names hold '_', LIKE's wildcard.
                matches.append("(key >= ? AND key < ?)")
                params += [key[:-1], key[:-1] + "\U0010ffff"]
            else:
                matches.append("key = ?")
                params.append(key)
        where.append(f"({' OR '.join(matches)})")
    sql = f"SELECT agent, ts, key, value FROM {STATS} WHERE {' AND '.join(where)} ORDER BY ts, rowid"  # noqa: S608
    return [Sample(*row) for row in db.execute(sql, params)]


def totals(db: sqlite_utils.Database) -> list[tuple[str, str, float]]:
    """Every ``(agent, key, all-time sum)``."""
    return [tuple(row) for row in db.execute(f"SELECT agent, key, value FROM {TOTALS} ORDER BY agent, key")]  # noqa: S608
