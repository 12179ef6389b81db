"""The dashboard's side: the last compaction on each agent's page and the host page, a button, ``/compact-notes``."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_compaction import records
from hyperhive_compaction.notes import notes_size
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.panels import Panel

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

SCRIPTS = (Path(__file__).parent / "static" / "compaction.js",)


def describe_run(run: dict[str, Any]) -> str:
    """One line about a compaction, for the CLI and the slash command."""
    agent = run["agent"]
    if run.get("queued"):
        return f"{agent} is in a turn; its notes are compacted when the turn ends"
    if run.get("started"):
        return f"{agent}: compacting notes.md ({run['before_bytes']} bytes); the live log tells how it went"
    if run["outcome"] == records.OK:
        return f"{agent}: notes.md compacted, {run['before_bytes']} → {run['after_bytes']} bytes"
    if run["outcome"] == records.RUNNING:
        return f"{agent}: compacting notes.md ({run['before_bytes']} bytes)"
    kept = f"notes.md kept at {run['before_bytes']} bytes"
    return f"{agent}: compaction undone ({run['outcome']}), {kept}: {run['reason']}"


async def compact_notes_command(hive: Hive, agent: str, args: str) -> str:
    """``/compact-notes``: compact this agent's notes now (or after its turn)."""
    if args:
        raise HyperhiveError("/compact-notes takes no arguments")
    return describe_run(await hive.compaction.request(agent, wait=False))


async def compact_view(hive: Hive, agent: str) -> dict[str, Any]:
    """``POST /-/compaction/agents/<agent>/compact``: the panel's button."""
    return await hive.compaction.request(agent, wait=False)


def _run_summary(run: dict[str, Any] | None) -> str:
    if run is None:
        return "no compaction yet"
    utc = escape(_utc(run["started_at"]))
    when = f'<time data-ago="{run["started_at"]}" title="{utc}">{utc}</time>'
    if run["outcome"] == records.RUNNING:
        return f"compacting now, started {when}, {run['before_bytes']} bytes"
    sizes = f"{run['before_bytes']} → {run['after_bytes']} bytes"
    if run["outcome"] == records.OK:
        saved = 100 - round(100 * run["after_bytes"] / run["before_bytes"])
        return f'<span class="ok">ok</span>, {sizes} ({saved}% smaller), {escape(run["trigger"])}, {when}'
    return (
        f'<span class="error">{escape(run["outcome"])}</span>, {escape(run["trigger"])}, {when}: '
        f"{escape(run['reason'] or '')}"
    )


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


async def agent_panel(hive: Hive, agent: str) -> Panel:
    """The agent's notes size against the threshold, its last compaction, and a button to run one."""
    compactor = hive.compaction
    [run] = await compactor.last(agent) or [None]
    size = notes_size(compactor.notes_path(agent))
    threshold = compactor.settings.threshold_bytes
    notes = "no notes.md yet" if size is None else f"notes.md is {size} bytes; compacted past {threshold}"
    html = (
        f"<p>{notes}</p><p>last compaction: {_run_summary(run)}</p>"
        f'<button type="button" data-api="/-/compaction/agents/{escape(agent)}/compact" '
        'data-done="compaction started" aria-label="compact the notes now">'
        "📦 C0MP4CT N0W</button>"
    )
    return Panel("compaction", "N0T3S", f"notes compaction of {agent}", html, scripts=SCRIPTS)


async def hive_panel(hive: Hive) -> Panel:
    """Every agent's notes size and last compaction."""
    compactor = hive.compaction
    last = {run["agent"]: run for run in await compactor.last()}
    rows = []
    for agent in hive.agents:
        size = notes_size(compactor.notes_path(agent.name))
        rows.append(
            f'<tr><th scope="row">{escape(agent.name)}</th><td>{"-" if size is None else size}</td>'
            f"<td>{_run_summary(last.get(agent.name))}</td></tr>"
        )
    html = (
        f"<p>notes.md is compacted past {compactor.settings.threshold_bytes} bytes.</p>"
        '<table class="compaction"><thead><tr><th scope="col">agent</th><th scope="col">notes.md bytes</th>'
        f'<th scope="col">last compaction</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return Panel("compaction", "N0T3S C0MP4CT10N", "notes compaction of every agent", html, scripts=SCRIPTS)
