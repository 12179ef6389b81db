"""The ``crashwatch_crashes`` table: one row per burst of crashes of one agent."""

from __future__ import annotations

from typing import Any

import sqlite_utils

TABLE = "crashwatch_crashes"


def m001_crashes(db: sqlite_utils.Database) -> None:
    """Bursts of crashes: when, how many, the last crash's status and log, and how many were reported."""
    db.table(TABLE).create(
        {
            "id": int,
            "agent": str,
            "first_at": float,
            "last_at": float,
            "count": int,
            "detail": str,
            "log_tail": str,
            "reported": int,
        },
        pk="id",
        not_null={"agent", "first_at", "last_at", "count", "detail", "log_tail", "reported"},
    )
    db.table(TABLE).create_index(["agent", "id"])
    db.table(TABLE).create_index(["last_at"])


MIGRATIONS = [m001_crashes]


def save(row: dict[str, Any], burst_id: int | None, keep: int, db: sqlite_utils.Database) -> int:
    """Write a burst's row; return its id. A new burst pushes the agent's oldest beyond ``keep`` out."""
    if burst_id is not None:
        db.table(TABLE).update(burst_id, row)
        return burst_id
    burst_id = db.table(TABLE).insert(row).last_pk
    assert isinstance(burst_id, int)  # an integer primary key, set by the insert
    db.execute(
        f"DELETE FROM {TABLE} WHERE agent = ? AND id NOT IN "  # noqa: S608 - a constant table name
        f"(SELECT id FROM {TABLE} WHERE agent = ? ORDER BY id DESC LIMIT ?)",
        [row["agent"], row["agent"], keep],
    )
    return burst_id


def forget(agent: str, db: sqlite_utils.Database) -> None:
    """Delete every burst of ``agent``."""
    db.table(TABLE).delete_where("agent = ?", [agent])


def unfinished(open_since: float, db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Bursts not fully reported, or with a crash at or after ``open_since`` (still open); oldest first."""
    return list(db.table(TABLE).rows_where("reported < count OR last_at >= ?", [open_since], order_by="id"))


def recent(agent: str | None, limit: int, db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """The newest ``limit`` bursts, of ``agent`` or of every agent; newest first."""
    where, params = ("agent = ?", [agent]) if agent is not None else (None, [])
    return list(db.table(TABLE).rows_where(where, params, order_by="last_at DESC, id DESC", limit=limit))
