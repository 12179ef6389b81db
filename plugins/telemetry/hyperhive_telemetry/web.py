"""The dashboard's side: ``GET /api/stats``, ``GET /metrics``, the agent page's charts, the hive panel.

The panels (``templates/``) are structure only; ``static/telemetry.js`` fills them
from ``/api/stats`` and keeps them live, drawing with the vendored uPlot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_core import Panel
from hyperhive_telemetry.api import metrics_text, stats_body
from hyperhive_telemetry.collect import TELEMETRY
from hyperhive_telemetry.prometheus import CONTENT_TYPE

if TYPE_CHECKING:
    from hyperhive_core import Hive

STATIC = Path(__file__).parent / "static"
SCRIPTS = (STATIC / "vendor" / "uplot" / "uPlot.iife.min.js", STATIC / "telemetry.js")
STYLES = (STATIC / "vendor" / "uplot" / "uPlot.min.css", STATIC / "telemetry.css")
AGENT_CHARTS = (
    ("turn_duration_ms", "turn duration", "duration of each turn"),
    ("turns_per_min", "turns per minute", "turns started each minute"),
    ("inbox_depth", "inbox depth", "messages waiting"),
    ("notes_bytes", "notes.md size", "size of notes.md"),
    ("memory_bytes", "memory", "memory the agent holds, 0 while asleep"),
)
HIVE_CHARTS = (
    ("turns_per_min", "turns per minute, by agent", "turns each agent took each minute"),
    ("inbox_depth", "inbox depth, by agent", "messages waiting for each agent"),
)
HIVE_COLUMNS = (
    "agent",
    "turns/min",
    "p50",
    "p95",
    "exits",
    "cost",
    "inbox now / max",
    "notes.md",
    "memory now / max",
    "since last turn",
)


async def stats_view(hive: Hive) -> dict[str, Any]:
    """``GET /api/stats?since=…&agent=…&key=…&series=0``; a bad parameter is a 400 that says why."""
    from quart import request

    return await stats_body(hive, {name: request.args.getlist(name) for name in request.args})


async def metrics_view(hive: Hive) -> tuple[str, int, dict[str, str]]:
    """``GET /metrics`` for Prometheus (scrapers send the operator token as a bearer token)."""
    return await metrics_text(hive), 200, {"Content-Type": CONTENT_TYPE}


ROUTES = (("/api/stats", stats_view), ("/metrics", metrics_view))


def agent_panel(hive: Hive, agent: str) -> Panel:
    """The agent page's charts and figures."""
    context = _context(hive, charts=AGENT_CHARTS, agent=agent)
    return Panel(
        key="telemetry",
        title="ST4TS",
        label=f"turn statistics of {agent}",
        template="telemetry/agent.html",
        context=context,
        scripts=SCRIPTS,
        styles=STYLES,
    )


def hive_panel(hive: Hive) -> Panel:
    """The dashboard's table of every agent's figures, with two charts."""
    context = _context(hive, charts=HIVE_CHARTS, columns=HIVE_COLUMNS)
    return Panel(
        key="telemetry",
        title="T3L3M3TRY",
        label="turn statistics of every agent",
        template="telemetry/hive.html",
        context=context,
        scripts=SCRIPTS,
        styles=STYLES,
    )


def _context(hive: Hive, **extra: Any) -> dict[str, Any]:
    settings = hive.stash[TELEMETRY].settings
    # Refresh about as often as the sampler writes, within reason for a browser.
    refresh = min(max(settings.sample_interval_seconds, 5.0), 60.0)
    span = describe_span(settings.window_seconds)
    return {"span": span, "window": f"{settings.window_seconds:g}", "refresh": f"{refresh:g}", **extra}


def describe_span(seconds: float) -> str:
    """``over the last 60 minutes``, ``over the last 2 days``: the window in words."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size or (unit == "minute" and seconds >= size):
            amount = round(seconds / size)
            return f"over the last {amount} {unit}{'s' if amount != 1 else ''}"
    return f"over the last {seconds:g} seconds"
