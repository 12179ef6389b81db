"""The ``compaction_runs`` table: every compaction, its sizes and how it ended."""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

TABLE = "compaction_runs"
KEEP_PER_AGENT = 100

RUNNING = "running"
OK = "ok"
RESTORED = "restored"
NOT_RESTORED = "not-restored"
"""Undone, but writing the original back failed; the backup holds it."""
INTERRUPTED = "interrupted"
"""The daemon stopped mid-way; the backup of that run holds the original."""


def m001_runs(db: sqlite_utils.Database) -> None:
    db.table(TABLE).create(
        {
            "id": int,
            "agent": str,
            "trigger": str,
            "model": str,
            "started_at": float,
            "finished_at": float,
            "before_bytes": int,
            "after_bytes": int,
            "outcome": str,
            "reason": str,
            "cost_usd": float,
            "backup": str,
        },
        pk="id",
        not_null={"agent", "trigger", "started_at", "before_bytes", "outcome"},
    )
    db.table(TABLE).create_index(["agent", "id"])


MIGRATIONS = [m001_runs]


def forget(db: sqlite_utils.Database, agent: str) -> None:
    """Delete every run of ``agent`` (purged): a new agent of that name starts with none."""
    db.table(TABLE).delete_where("agent = ?", [agent])


def start_run(db: sqlite_utils.Database, agent: str, trigger: str, model: str, before_bytes: int) -> int:
    """Record a compaction that is starting; return its id. Old runs beyond the cap go."""
    row = {
        "agent": agent,
        "trigger": trigger,
        "model": model,
        "started_at": time.time(),
        "before_bytes": before_bytes,
        "outcome": RUNNING,
    }
    run_id = db.table(TABLE).insert(row).last_pk
    assert isinstance(run_id, int)  # an integer primary key, set by the insert
    db.execute(
        f"DELETE FROM {TABLE} WHERE agent = ? AND id NOT IN "  # noqa: S608 - a constant table name
        f"(SELECT id FROM {TABLE} WHERE agent = ? ORDER BY id DESC LIMIT ?)",
        [agent, agent, KEEP_PER_AGENT],
    )
    return run_id


def finish_run(db: sqlite_utils.Database, run_id: int, **columns: Any) -> dict[str, Any]:
    """Record how a run ended; return the whole row."""
    db.table(TABLE).update(run_id, {"finished_at": time.time(), **columns})
    return db.table(TABLE).get(run_id)


def unfinished_runs(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Runs a previous daemon left ``running``: it died during them."""
    return list(db[TABLE].rows_where("outcome = ?", [RUNNING], order_by="id"))


def last_runs(db: sqlite_utils.Database, agent: str | None = None, limit: int = 1) -> list[dict[str, Any]]:
    """The newest runs, newest first: of one agent, or the latest of each agent."""
    if agent is not None:
        return list(db[TABLE].rows_where("agent = ?", [agent], order_by="id DESC", limit=limit))
    return list(
        db[TABLE].rows_where(f"id IN (SELECT max(id) FROM {TABLE} GROUP BY agent)", order_by="agent")  # noqa: S608
    )
