"""The dashboard's side: ``GET /api/stats``, ``GET /metrics``, the agent page's charts, the hive panel.

The panels are structure only; ``static/telemetry.js`` fills them from
``/api/stats`` and keeps them live, drawing with the vendored uPlot.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_core.panels import Panel
from hyperhive_telemetry.api import metrics_text, stats_body
from hyperhive_telemetry.prometheus import CONTENT_TYPE

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

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
    settings = hive.telemetry.settings
    span = describe_span(settings.window_seconds)
    charts = "".join(
        f'<figure><figcaption>{escape(caption)}</figcaption><div class="telemetry-chart" data-chart="{key}" '
        f'data-label="{escape(caption)}" role="img" aria-label="{escape(what)}, {span}"></div></figure>'
        for key, caption, what in AGENT_CHARTS
    )
    html = (
        f'<div class="telemetry" data-telemetry="agent" data-telemetry-agent="{escape(agent)}" '
        f'{_timing(hive)}><p class="telemetry-status" role="status" hidden></p>'
        f'<p class="telemetry-span">{span}</p>'
        '<dl class="telemetry-figures" aria-live="polite"><dt>turns</dt><dd>loading…</dd></dl>'
        f'<div class="telemetry-charts">{charts}</div></div>'
    )
    return Panel("telemetry", "ST4TS", f"turn statistics of {agent}", html, scripts=SCRIPTS, styles=STYLES)


def hive_panel(hive: Hive) -> Panel:
    """The dashboard's table of every agent's figures, with two charts."""
    span = describe_span(hive.telemetry.settings.window_seconds)
    head = "".join(f'<th scope="col">{escape(column)}</th>' for column in HIVE_COLUMNS)
    charts = "".join(
        f'<figure><figcaption>{escape(caption)}</figcaption><div class="telemetry-chart" data-chart="{key}" '
        f'role="img" aria-label="{escape(what)}, {span}"></div></figure>'
        for key, caption, what in HIVE_CHARTS
    )
    html = (
        f'<div class="telemetry" data-telemetry="hive" {_timing(hive)}>'
        '<p class="telemetry-status" role="status" hidden></p>'
        f'<p class="telemetry-span">{span}; <span class="telemetry-approvals">approvals waiting: …</span></p>'
        f'<table class="telemetry-table"><caption class="sr">turn statistics by agent, {span}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody></tbody></table>"
        f'<div class="telemetry-charts">{charts}</div></div>'
    )
    return Panel("telemetry", "T3L3M3TRY", "turn statistics of every agent", html, scripts=SCRIPTS, styles=STYLES)


def _timing(hive: Hive) -> str:
    settings = hive.telemetry.settings
    # Refresh about as often as the sampler writes, within reason for a browser.
    refresh = min(max(settings.sample_interval_seconds, 5.0), 60.0)
    return f'data-telemetry-window="{settings.window_seconds:g}" data-telemetry-refresh="{refresh:g}"'


def describe_span(seconds: float) -> str:
    """``over the last 60 minutes``, ``over the last 2 days``: the window in words."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size or (unit == "minute" and seconds >= size):
            amount = round(seconds / size)
            return f"over the last {amount} {unit}{'s' if amount != 1 else ''}"
    return f"over the last {seconds:g} seconds"
