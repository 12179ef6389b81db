"""The plugin's table of spans, ``tracing_spans``, and how the rest of the plugin reads and writes it.

One row per span. An open span (a turn still running, a question nobody answered
yet) is stored with ``end_ns`` NULL and status ``open``, so a trace survives a
daemon restart: the span is closed when its end arrives, by whichever run of the
daemon sees it. Saving a span again replaces it, except that an open copy never
overwrites a finished one (the end of a span may be saved before a late copy of
its start).

A turn's key (``trace_of_turn``) is the id of the first message the turn handled,
as a string: the first of the ``turn_start`` event's ``message_ids``. A turn that
runs again (after a crash or a restart) handles the same batch, so it keeps the key
and the trace.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlite_utils

if TYPE_CHECKING:
    from hyperhive_core import Hive

TABLE = "tracing_spans"
KINDS = ("message", "turn", "tool", "send", "question", "approval", "nap", "compaction", "model")
STATUSES = ("ok", "error", "open")
TRACE_ID = re.compile(r"[0-9a-f]{32}")
SPAN_ID = re.compile(r"[0-9a-f]{16}")
_NS_PER_DAY = 86_400 * 1_000_000_000


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex digits, never all zeros (OTLP's invalid id)."""
    while (trace_id := secrets.token_hex(16)) == "0" * 32:
        pass  # one chance in 2**128
    return trace_id


def new_span_id() -> str:
    """A random span id: 16 lowercase hex digits, never all zeros."""
    while (span_id := secrets.token_hex(8)) == "0" * 16:
        pass
    return span_id


@dataclass(frozen=True)
class SpanRecord:
    """One span as stored: the row of ``tracing_spans``, JSON columns decoded."""

    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    kind: str
    agent: str
    host: str
    start_ns: int
    end_ns: int | None = None
    status: str = "open"
    waits_on_person: bool = False
    """The span's duration is a person's time: a question to the operator, an approval."""
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, str]] = field(default_factory=list)
    """Other spans this one relates to without being their child: ``{"trace_id", "span_id"}`` each."""

    def __post_init__(self) -> None:
        problems = []
        if not SPAN_ID.fullmatch(self.span_id):
            problems.append(f"span_id {self.span_id!r} is not 16 lowercase hex digits")
        if not TRACE_ID.fullmatch(self.trace_id):
            problems.append(f"trace_id {self.trace_id!r} is not 32 lowercase hex digits")
        if self.parent_id is not None and not SPAN_ID.fullmatch(self.parent_id):
            problems.append(f"parent_id {self.parent_id!r} is not 16 lowercase hex digits (or None for a root)")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.status not in STATUSES:
            problems.append(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if (self.end_ns is None) != (self.status == "open"):
            problems.append(f"status {self.status!r} with end_ns {self.end_ns}: a span is open exactly when unended")
        if self.end_ns is not None and self.end_ns < self.start_ns:
            problems.append(f"end_ns {self.end_ns} is before start_ns {self.start_ns}")
        for link in self.links:
            if not (TRACE_ID.fullmatch(str(link.get("trace_id"))) and SPAN_ID.fullmatch(str(link.get("span_id")))):
                problems.append(f"link {link!r} needs a trace_id (32 hex) and a span_id (16 hex)")
        if problems:
            raise ValueError(f"span {self.name!r}: " + "; ".join(problems))

    @property
    def open(self) -> bool:
        return self.end_ns is None

    def to_row(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id,
            "trace_id": self.trace_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "kind": self.kind,
            "agent": self.agent,
            "host": self.host,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "waits_on_person": int(self.waits_on_person),
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "attributes": json.dumps(self.attributes, sort_keys=True),
            "links": json.dumps(self.links),
        }

    def to_event(self) -> dict[str, Any]:
        """The span as live-event data, for the other hosts of a hive across several."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> SpanRecord:
        """A span another host published (``to_event``); a malformed one raises ``ValueError`` or ``TypeError``."""
        return cls(**{name: data[name] for name in _FIELDS if name in data})

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SpanRecord:
        fields = {**row, "waits_on_person": bool(row["waits_on_person"])}
        fields["attributes"] = json.loads(row["attributes"])
        fields["links"] = json.loads(row["links"])
        return cls(**fields)


_FIELDS = tuple(SpanRecord.__dataclass_fields__)


@dataclass(frozen=True)
class TraceSummary:
    """One trace as a list of traces shows it."""

    trace_id: str
    root_name: str
    """The root span's name; ``""`` while this host has no root for it (its spans came first)."""
    started_ns: int
    duration_ns: int | None
    """From the first start to the last end; ``None`` while a span is open."""
    span_count: int
    agents: list[str]
    cost_usd: float
    open: bool


_COLUMNS = (
    "span_id, trace_id, parent_id, name, kind, agent, host, start_ns, end_ns, status, "
    "waits_on_person, cost_usd, input_tokens, output_tokens, attributes, links"
)


def m001_spans(db: sqlite_utils.Database) -> None:
    db.execute(
        f"""
        CREATE TABLE {TABLE} (
            span_id TEXT PRIMARY KEY,
            trace_id TEXT NOT NULL,
            parent_id TEXT,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            agent TEXT NOT NULL,
            host TEXT NOT NULL,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER,
            status TEXT NOT NULL,
            waits_on_person INTEGER NOT NULL,
            cost_usd REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            attributes TEXT NOT NULL,
            links TEXT NOT NULL
        )
        """
    )
    db.execute(f"CREATE INDEX {TABLE}_by_trace ON {TABLE} (trace_id, start_ns)")
    # An agent's recent traces, and a turn's trace by its key.
    db.execute(f"CREATE INDEX {TABLE}_by_agent ON {TABLE} (agent, kind, start_ns)")


MIGRATIONS = [m001_spans]

# An open copy of a span never replaces its finished copy.
_UPSERT = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ("  # noqa: S608 - fixed fragments
    + ", ".join(f":{name.strip()}" for name in _COLUMNS.split(","))
    + ") ON CONFLICT(span_id) DO UPDATE SET "
    + ", ".join(f"{name.strip()} = excluded.{name.strip()}" for name in _COLUMNS.split(",")[1:])
    + f" WHERE {TABLE}.status = 'open' OR excluded.status != 'open'"
)


def _save(rows: list[dict[str, Any]], db: sqlite_utils.Database) -> None:
    db.conn.executemany(_UPSERT, rows)


async def save_spans(hive: Hive, spans: Sequence[SpanRecord]) -> None:
    """Store ``spans``, replacing earlier copies (never a finished one with an open one)."""
    if spans:
        rows = [span.to_row() for span in spans]
        # Spans are a record of what happened, not the work itself: a power cut may lose the last few.
        await hive.store.write(lambda db: _save(rows, db), durable=False)


def _select(db: sqlite_utils.Database, where: str, params: Sequence[Any]) -> list[SpanRecord]:
    cursor = db.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE {where}", params)  # noqa: S608
    names = [column[0] for column in cursor.description]
    return [SpanRecord.from_row(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


async def trace_spans(hive: Hive, trace_id: str) -> list[SpanRecord]:
    """Every stored span of ``trace_id``, by start (then id); ``[]`` for a trace not stored."""
    return await hive.store.read(lambda db: _select(db, "trace_id = ? ORDER BY start_ns, span_id", [trace_id]))


async def open_spans(hive: Hive) -> list[SpanRecord]:
    """The spans still open, as a restarted daemon finds them."""
    return await hive.store.read(lambda db: _select(db, "status = 'open' ORDER BY start_ns", []))


def _recent(db: sqlite_utils.Database, limit: int, agent: str | None) -> list[TraceSummary]:
    chosen = (
        f"SELECT trace_id FROM {TABLE} WHERE agent = ? GROUP BY trace_id ORDER BY max(start_ns) DESC LIMIT ?"  # noqa: S608
        if agent is not None
        else f"SELECT trace_id FROM {TABLE} GROUP BY trace_id ORDER BY min(start_ns) DESC LIMIT ?"  # noqa: S608
    )
    rows = db.execute(
        f"""
        SELECT trace_id, min(start_ns), max(coalesce(end_ns, start_ns)), count(*), sum(status = 'open'),
               total(cost_usd), json_group_array(DISTINCT agent),
               (SELECT name FROM {TABLE} root WHERE root.trace_id = spans.trace_id AND root.parent_id IS NULL
                ORDER BY root.start_ns LIMIT 1)
        FROM {TABLE} spans WHERE trace_id IN ({chosen})
        GROUP BY trace_id ORDER BY min(start_ns) DESC
        """,  # noqa: S608 - fixed fragments
        [agent, limit] if agent is not None else [limit],
    ).fetchall()
    return [
        TraceSummary(
            trace_id=trace_id,
            root_name=root or "",
            started_ns=started,
            duration_ns=None if open_count else ended - started,
            span_count=count,
            agents=sorted(json.loads(agents)),
            cost_usd=cost,
            open=bool(open_count),
        )
        for trace_id, started, ended, count, open_count, cost, agents, root in rows
    ]


async def recent_traces(hive: Hive, limit: int = 50, *, agent: str | None = None) -> list[TraceSummary]:
    """The newest ``limit`` traces, newest first; with ``agent``, those it took part in (newest work first)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return await hive.store.read(lambda db: _recent(db, limit, agent))


def _trace_of_turn(db: sqlite_utils.Database, agent: str, turn_key: str) -> str | None:
    row = db.execute(
        f"SELECT trace_id FROM {TABLE} WHERE agent = ? AND kind = 'turn' "  # noqa: S608
        "AND json_extract(attributes, '$.turn_key') = ? ORDER BY start_ns DESC LIMIT 1",
        [agent, turn_key],
    ).fetchone()
    return row[0] if row else None


async def trace_of_turn(hive: Hive, agent: str, turn_key: str | int) -> str | None:
    """The trace of ``agent``'s turn with ``turn_key`` (its first message's id), or ``None`` if none is stored."""
    return await hive.store.read(lambda db: _trace_of_turn(db, agent, str(turn_key)))


def _prune(cutoff_ns: int, db: sqlite_utils.Database) -> int:
    return db.execute(
        f"DELETE FROM {TABLE} WHERE trace_id IN ("  # noqa: S608
        f"  SELECT trace_id FROM {TABLE} GROUP BY trace_id HAVING max(max(start_ns, coalesce(end_ns, 0))) < ?)",
        [cutoff_ns],
    ).rowcount


async def prune(hive: Hive, retention_days: float, *, now_ns: int | None = None) -> int:
    """Delete every trace in which nothing started or ended for ``retention_days``; return the spans deleted.

    A span left open that long (its agent destroyed mid-turn, say) goes with its trace.
    """
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = now - round(retention_days * _NS_PER_DAY)
    return await hive.store.write(lambda db: _prune(cutoff, db), durable=False)
