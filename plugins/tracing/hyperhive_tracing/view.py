"""The dashboard's side of tracing: the trace list and the trace page under ``/-/tracing/``,
their JSON, the recent traces panels, and the link from a turn in an agent's tail to its trace.

The pages are rendered on the server (``templates/``); ``static/trace.js`` only opens a
span's details on a tap and follows links between spans. What a trace's figures mean
(critical path, a person's time, cost per branch) is ``analysis``'s to say.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_core import HyperhiveError, Panel, hookimpl, iso_utc
from hyperhive_tracing.analysis import SpanNode, TraceAnalysis, analyse
from hyperhive_tracing.store import TRACE_ID, TraceSummary, recent_traces, trace_spans

if TYPE_CHECKING:
    from quart import Response

    from hyperhive_core import Event, Hive

PREFIX = "/-/tracing"
STATIC = Path(__file__).parent / "static"
ASSETS = {name: STATIC / name for name in ("trace.js", "tracing.css")}  # the pages'
PANEL_SCRIPT = STATIC / "panel.js"
LIST_LIMIT, MAX_LIMIT = 50, 500
PANEL_TRACES = 8
TURN_EVENT = "tracing.turn"
NS_PER_MS = 1_000_000
AXIS_TICKS = 4


# -- addresses ---------------------------------------------------------------------------


def trace_href(trace_id: str, span_id: str | None = None) -> str:
    """The trace page's address; with ``span_id``, opened at that span."""
    return f"{PREFIX}/trace/{trace_id}" + (f"#span-{span_id}" if span_id else "")


def publish_turn_link(hive: Hive, agent: str, trace_id: str, span_id: str) -> Event:
    """Tell ``agent``'s live tail that the turn just started belongs to ``trace_id``.

    The tail shows a plugin event's ``text`` with its ``link`` (docs/plugins.md, "A link
    in an agent's live tail"); the capture publishes this as a turn's span starts.
    """
    return hive.events.publish(
        agent,
        TURN_EVENT,
        trace_id=trace_id,
        span_id=span_id,
        text=f"trace {trace_id[:8]}",
        link={"href": trace_href(trace_id, span_id), "label": "waterfall ↗"},
    )


# -- figures as people read them ------------------------------------------------------------------


def duration_text(ns: int | None) -> str:
    """``850ms``, ``12.3s``, ``2m 05s``, ``1h 02m``: as the dashboard's ``formatDuration`` shows one."""
    if ns is None or ns < 0:
        return ""
    ms = round(ns / NS_PER_MS)
    if ms < 1000:
        return f"{ms}ms"
    tenths = round(ns / (100 * NS_PER_MS))
    if tenths < 600:
        return f"{tenths / 10:.1f}s"
    seconds = round(ns / (1000 * NS_PER_MS))
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def cost_text(cost: float | None) -> str:
    return f"${cost or 0:.4f}"


def when_text(ns: int) -> str:
    return iso_utc(ns / 1_000_000_000)


# -- reading requests ----------------------------------------------------------------------------


def checked_trace_id(trace_id: str) -> str:
    if not TRACE_ID.fullmatch(trace_id):
        raise HyperhiveError(
            f"{trace_id!r} is not a trace id: a trace id is 32 lowercase hex digits, as {PREFIX}/ lists them"
        )
    return trace_id


def checked_limit(raw: str | None) -> int:
    if raw is None:
        return LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise HyperhiveError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}")
    return int(raw)


async def listed(hive: Hive) -> tuple[list[TraceSummary], str | None]:
    """The traces ``?limit=`` and ``?agent=`` ask for, and the agent."""
    from quart import request

    agent = request.args.get("agent") or None
    return await recent_traces(hive, checked_limit(request.args.get("limit")), agent=agent), agent


async def analysed(hive: Hive, trace_id: str) -> TraceAnalysis | None:
    """The trace, its open spans drawn to now; ``None`` for a trace not stored."""
    spans = await trace_spans(hive, checked_trace_id(trace_id))
    return analyse(spans, time.time_ns()) if spans else None


def not_stored(trace_id: str) -> str:
    return f"no trace {trace_id} is stored (it may be older than [tracing] retention); {PREFIX}/ lists them"


# -- what the templates show ---------------------------------------------------------------------------


def summary_row(summary: TraceSummary) -> dict[str, Any]:
    return {
        "href": trace_href(summary.trace_id),
        "trace_id": summary.trace_id,
        "root": summary.root_name or "(its root is not stored yet)",
        "agents": summary.agents,
        "started": when_text(summary.started_ns),
        "duration": "open" if summary.open else duration_text(summary.duration_ns),
        "cost": cost_text(summary.cost_usd),
        "spans": summary.span_count,
        "open": summary.open,
    }


def span_row(
    node: SpanNode, analysis: TraceAnalysis, critical: frozenset[str], names: dict[str, str]
) -> dict[str, Any]:
    span = node.span
    parent = span.parent_id if span.parent_id in names and not node.orphan else None
    whole = max(analysis.duration_ns, 1)
    attributes = {key: value if isinstance(value, str) else json.dumps(value) for key, value in span.attributes.items()}
    return {
        "id": span.span_id,
        "name": span.name,
        "kind": span.kind,
        "agent": span.agent,
        "host": span.host,
        "status": span.status,
        "depth": node.depth,
        "orphan": node.orphan,
        "open": node.open,
        "critical": span.span_id in critical,
        "person": span.waits_on_person,
        "left": f"{100 * (span.start_ns - analysis.start_ns) / whole:.3f}",
        "width": f"{100 * (node.end_ns - span.start_ns) / whole:.3f}",
        "after": f"{100 * (node.end_ns - analysis.start_ns) / whole:.3f}",
        "offset": duration_text(span.start_ns - analysis.start_ns),
        "duration": duration_text(node.end_ns - span.start_ns),
        "started": when_text(span.start_ns),
        "cost": None if span.cost_usd is None else cost_text(span.cost_usd),
        "subtree_cost": cost_text(node.cost_usd),
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "attributes": sorted(attributes.items()),
        "parent": {"href": f"#span-{parent}", "label": names[parent]} if parent else None,
        "links": [
            {
                "href": trace_href(link["trace_id"], link["span_id"]),
                "label": f"{link['trace_id'][:8]}/{link['span_id']}",
            }
            for link in span.links
        ],
    }


def trace_context(trace_id: str, analysis: TraceAnalysis) -> dict[str, Any]:
    critical = analysis.critical_ids
    names = {node.span.span_id: node.span.name for node in analysis.rows}
    root = analysis.roots[0].span.name if analysis.roots else trace_id
    duration = analysis.duration_ns
    return {
        "trace_id": trace_id,
        "root": root,
        "started": when_text(analysis.start_ns),
        "duration": duration_text(duration),
        "open": analysis.open,
        "spans": len(analysis.rows),
        "agents": sorted({node.span.agent for node in analysis.rows}),
        "total_cost": cost_text(analysis.total_cost_usd),
        "person_wait": duration_text(analysis.person_wait_ns) if analysis.person_wait_ns else "none",
        "person_waited": analysis.person_wait_ns > 0,
        "person_share": f"{100 * analysis.person_wait_ns / duration:.0f}%" if duration else "0%",
        "critical_path": [node.span.name for node in analysis.critical_path],
        "branches": [
            {**asdict(branch), "cost": cost_text(branch.cost_usd), "href": f"#span-{branch.span_id}"}
            for branch in analysis.branches
        ],
        "by_agent": [(agent, cost_text(cost)) for agent, cost in analysis.cost_by_agent.items()],
        "axis": [duration_text(duration * tick // AXIS_TICKS) for tick in range(AXIS_TICKS + 1)],
        "person_bars": [
            (
                f"{100 * (start - analysis.start_ns) / max(duration, 1):.3f}",
                f"{100 * (end - start) / max(duration, 1):.3f}",
            )
            for start, end in analysis.person_intervals
        ],
        "rows": [span_row(node, analysis, critical, names) for node in analysis.rows],
    }


def trace_json(trace_id: str, analysis: TraceAnalysis) -> dict[str, Any]:
    critical = analysis.critical_ids
    return {
        "trace_id": trace_id,
        "start_ns": analysis.start_ns,
        "finish_ns": analysis.finish_ns,
        "duration_ns": analysis.duration_ns,
        "open": analysis.open,
        "person_wait_ns": analysis.person_wait_ns,
        "person_intervals": [list(interval) for interval in analysis.person_intervals],
        "total_cost_usd": analysis.total_cost_usd,
        "cost_by_agent": analysis.cost_by_agent,
        "branches": [asdict(branch) for branch in analysis.branches],
        "critical_path": [node.span.span_id for node in analysis.critical_path],
        "spans": [
            {
                **asdict(node.span),
                "depth": node.depth,
                "orphan": node.orphan,
                "critical": node.span.span_id in critical,
                "drawn_end_ns": node.end_ns,
                "subtree_cost_usd": node.cost_usd,
            }
            for node in analysis.rows
        ],
    }


# -- routes ------------------------------------------------------------------------------------------


async def list_page(hive: Hive) -> str | tuple[str, int]:
    """``GET /-/tracing/``: the recent traces (``?agent=`` those an agent took part in, ``?limit=``)."""
    from quart import render_template

    try:
        traces, agent = await listed(hive)
    except HyperhiveError as bad:
        return await message_page("wrong request", "WR0NG R3QU3ST", str(bad)), 400
    return await render_template(
        "tracing/list.html", traces=[summary_row(summary) for summary in traces], agent=agent, prefix=PREFIX
    )


async def message_page(title: str, heading: str, message: str) -> str:
    """A page that says what went wrong, for a person who opened a link."""
    from quart import render_template

    return await render_template("tracing/message.html", prefix=PREFIX, title=title, heading=heading, message=message)


async def list_json(hive: Hive) -> dict[str, Any]:
    """``GET /-/tracing/api/traces``: the same list as JSON."""
    traces, _ = await listed(hive)
    return {"traces": [asdict(summary) for summary in traces]}


async def trace_page(hive: Hive, trace_id: str) -> str | tuple[str, int]:
    """``GET /-/tracing/trace/<trace_id>``: the waterfall, its critical path, a person's time, the cost."""
    from quart import render_template

    try:
        analysis = await analysed(hive, trace_id)
    except HyperhiveError as bad:
        return await message_page("not a trace id", "N0T 4 TR4C3", str(bad)), 400
    if analysis is None:
        return await message_page("no such trace", "N0 SUCH TR4C3", not_stored(trace_id)), 404
    return await render_template("tracing/trace.html", prefix=PREFIX, **trace_context(trace_id, analysis))


async def trace_api(hive: Hive, trace_id: str) -> dict[str, Any]:
    """``GET /-/tracing/api/trace/<trace_id>``: every span, drawn as the page draws it, and the figures."""
    from quart import abort

    analysis = await analysed(hive, trace_id)
    if analysis is None:
        abort(404, not_stored(trace_id))
    return trace_json(trace_id, analysis)


async def asset(hive: Hive, name: str) -> Response:
    """``GET /-/tracing/static/<name>``: the pages' script and stylesheet, nothing else."""
    from quart import abort, send_file

    if name not in ASSETS:
        abort(404, f"no tracing asset {name!r}; there are {', '.join(sorted(ASSETS))}")
    return await send_file(ASSETS[name])


ROUTES: tuple[tuple[str, Callable[..., Any]], ...] = (
    (f"{PREFIX}/", list_page),
    (f"{PREFIX}/trace/<trace_id>", trace_page),
    (f"{PREFIX}/api/traces", list_json),
    (f"{PREFIX}/api/trace/<trace_id>", trace_api),
    (f"{PREFIX}/static/<name>", asset),
)


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    for rule, view in ROUTES:
        register(rule, view)


# -- panels --------------------------------------------------------------------------------------------


def traces_panel(traces: list[TraceSummary], label: str, more: str) -> Panel:
    return Panel(
        key="tracing",
        title="TR4C3S",
        label=label,
        template="tracing/panel.html",
        context={"traces": [summary_row(summary) for summary in traces], "more": more},
        scripts=(PANEL_SCRIPT,),
        styles=(ASSETS["tracing.css"],),
    )


@hookimpl
async def dashboard_panels(hive: Hive) -> list[Panel]:
    traces = await recent_traces(hive, PANEL_TRACES)
    return [traces_panel(traces, "recent traces", f"{PREFIX}/")]


@hookimpl
async def agent_panels(hive: Hive, agent: str) -> list[Panel]:
    traces = await recent_traces(hive, PANEL_TRACES, agent=agent)
    return [traces_panel(traces, f"recent traces {agent} took part in", f"{PREFIX}/?agent={agent}")]
