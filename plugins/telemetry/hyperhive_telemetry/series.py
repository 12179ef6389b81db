"""Reading the samples back: query parameters, series, percentiles and per-agent summaries."""

from __future__ import annotations

import datetime
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hyperhive_core import HyperhiveError
from hyperhive_telemetry.store import HIVE, Sample

DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KEY = re.compile(r"[A-Za-z0-9_.:-]+\*?|\*")
CLASSES = ("peer", "operator", "manager", "system")


class BadQuery(HyperhiveError):
    """A stats query parameter that cannot be understood."""


def percentile(values: Iterable[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile, or ``None`` without values.

    The smallest value such that at least ``p`` percent of the values are at or
    below it: of ``n`` sorted values, the one at rank ``ceil(p / 100 * n)`` (at
    least 1). It is always one of the values, never an interpolation: p50 of
    ``[1, 2, 3, 4]`` is 2, p95 of ``1..100`` is 95, p100 is the maximum.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_since(text: str | None, now: float, default_window: float) -> float:
    """``since`` as a Unix time; ``now - default_window`` when not given.

    Accepted: seconds since the epoch (``1732270000``), an ISO 8601 time
    (``2026-11-22T10:00:00Z``; UTC when it has no offset), or a duration back from
    now (``90s``, ``15m``, ``2h``, ``7d``).
    """
    if text is None or not text.strip():
        return now - default_window
    text = text.strip()
    if match := DURATION.fullmatch(text):
        return now - float(match[1]) * UNITS[match[2]]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and value >= 0:
            return value
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(
            f"since={text!r} is not a time: give seconds since the epoch (1732270000), "
            "an ISO 8601 time (2026-11-22T10:00:00Z) or a duration back from now (15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class StatsQuery:
    since: float
    until: float
    agents: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    with_series: bool = True
    """``series=0`` leaves the points out: the summaries alone, for a live refresh."""


def parse_query(args: Mapping[str, Sequence[str]], now: float, default_window: float) -> StatsQuery:
    """``since``, ``agent``, ``key`` and ``series`` from a query string.

    ``agent`` and ``key`` may repeat, or list several values separated by commas.

    :raises BadQuery: a value that cannot be understood, saying what would be.
    """
    unknown = sorted(set(args) - {"since", "agent", "key", "series"})
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; /api/stats takes since, agent, key and series")
    with_series = (args.get("series") or ["1"])[-1]
    if with_series not in ("0", "1"):
        raise BadQuery(f"series={with_series!r}: give 1 for the points (the default) or 0 for the summaries alone")
    given = args.get("since")
    since = parse_since(given[-1] if given else None, now, default_window)
    agents = _split(args.get("agent", ()))
    keys = _split(args.get("key", ()))
    for key in keys:
        if not KEY.fullmatch(key):
            raise BadQuery(f"key={key!r} is not a series key: use names like turn_duration_ms, or tool:* for a family")
    return StatsQuery(since, now, agents, tuple(key for key in keys if key != "*"), with_series == "1")


def _split(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def series(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Samples grouped into one series per agent and key: ``{"agent", "key", "points": [[ts, value], …]}``."""
    grouped: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for sample in samples:
        grouped[(sample.agent, sample.key)].append([sample.ts, sample.value])
    return [{"agent": agent, "key": key, "points": points} for (agent, key), points in sorted(grouped.items())]


def summarise(samples: Iterable[Sample], since: float, until: float) -> dict[str, dict[str, Any]]:
    """Per agent, the figures over ``[since, until]``; the agent ``hive`` has the approval queue."""
    by_agent: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        by_agent[sample.agent][sample.key].append(sample.value)
    minutes = max(until - since, 1.0) / 60
    summary: dict[str, dict[str, Any]] = {}
    for agent, keys in sorted(by_agent.items()):
        if agent == HIVE:
            summary[agent] = {"approval_queue": _gauge(keys["approval_queue"])}
            continue
        durations = keys["turn_duration_ms"]
        turns = len(durations)
        summary[agent] = {
            "turns": turns,
            "turns_per_min": turns / minutes,
            "turn_duration_ms": {"p50": percentile(durations, 50), "p95": percentile(durations, 95)},
            "tool_calls_per_turn": sum(keys["tool_calls"]) / turns if turns else None,
            "exits": _family(keys, "exit:"),
            "tools": _family(keys, "tool:"),
            "messages_per_turn": {
                direction: {kind: sum(keys[f"{direction}:{kind}"]) / turns if turns else 0.0 for kind in CLASSES}
                for direction in ("sent", "received")
            },
            "permission_denials": sum(keys["permission_denials"]),
            "dead_lettered": sum(keys["dead_lettered"]),
            "cost_usd": sum(keys["cost_usd"]),
            "inbox_depth": _gauge(keys["inbox_depth"]),
            "seconds_since_last_turn": _last(keys["seconds_since_last_turn"]),
            "notes_bytes": _last(keys["notes_bytes"]),
            "memory_bytes": _gauge(keys["memory_bytes"]),
        }
    return summary


def _family(keys: Mapping[str, list[float]], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): sum(values) for key, values in sorted(keys.items()) if key.startswith(prefix)}


def _gauge(values: list[float]) -> dict[str, float | None]:
    """A gauge over the window: its last value and its maximum."""
    return {"current": _last(values), "max": max(values) if values else None}


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def stats(samples: Sequence[Sample], query: StatsQuery) -> dict[str, Any]:
    """The body of ``GET /api/stats``: the window, every series, and the summaries."""
    return {
        "since": query.since,
        "until": query.until,
        "series": series(samples) if query.with_series else [],
        "summary": summarise(samples, query.since, query.until),
    }
