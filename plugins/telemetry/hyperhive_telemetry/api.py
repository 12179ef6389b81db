"""What the routes and the host socket serve: ``/api/stats`` bodies and ``/metrics`` text."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hyperhive_telemetry import prometheus, store
from hyperhive_telemetry.collect import TELEMETRY, current_samples
from hyperhive_telemetry.series import parse_query, stats

if TYPE_CHECKING:
    from hyperhive_core import Hive

WINDOW_KEYS = ("turn_duration_ms", "inbox_depth")


async def stats_body(hive: Hive, args: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The series and summaries a stats query asks for.

    :param args: the query string, each parameter a list of values.
    :raises BadQuery: a parameter that cannot be understood.
    """
    query = parse_query(args, time.time(), hive.stash[TELEMETRY].settings.window_seconds)
    samples = await hive.store.read(
        lambda db: store.query(db, since=query.since, until=query.until, agents=query.agents, keys=query.keys)
    )
    return stats(samples, query)


async def metrics_text(hive: Hive) -> str:
    """The Prometheus exposition of every agent's figures."""
    now = time.time()
    window_seconds = hive.stash[TELEMETRY].settings.window_seconds
    live = await current_samples(hive, now)

    def read(db: Any) -> tuple[list, list]:
        return store.totals(db), store.query(db, since=now - window_seconds, keys=WINDOW_KEYS)

    totals, window = await hive.store.read(read)
    return prometheus.render(totals, window, live, window_seconds)
