"""The dashboard's side: the last compaction on each agent's page and the host page, a button, ``/compact-notes``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_compaction import records
from hyperhive_compaction.compactor import COMPACTOR
from hyperhive_compaction.notes import notes_size
from hyperhive_core import HyperhiveError, Panel

if TYPE_CHECKING:
    from hyperhive_core import Hive

SCRIPTS = (Path(__file__).parent / "static" / "compaction.js",)
# The outcomes templates/run.html tells apart.
OUTCOMES = {"running": records.RUNNING, "ok": records.OK}


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
    return describe_run(await hive.stash[COMPACTOR].request(agent, wait=False))


async def compact_view(hive: Hive, agent: str) -> dict[str, Any]:
    """``POST /-/compaction/agents/<agent>/compact``: the panel's button."""
    return await hive.stash[COMPACTOR].request(agent, wait=False)


def _run_context(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run as ``templates/run.html`` shows it: its row, its start in UTC, how much it saved."""
    if run is None:
        return None
    saved = None
    if run["outcome"] == records.OK:
        saved = 100 - round(100 * run["after_bytes"] / run["before_bytes"])
    return {**run, "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started_at"])), "saved": saved}


async def agent_panel(hive: Hive, agent: str) -> Panel:
    """The agent's notes size against the threshold, its last compaction, and a button to run one."""
    compactor = hive.stash[COMPACTOR]
    runs = await compactor.last(agent)
    context = {
        "agent": agent,
        "size": notes_size(compactor.notes_path(agent)),
        "threshold": compactor.settings.threshold_bytes,
        "run": _run_context(runs[0] if runs else None),
        **OUTCOMES,
    }
    return Panel(
        key="compaction",
        title="N0T3S",
        label=f"notes compaction of {agent}",
        template="compaction/agent.html",
        context=context,
        scripts=SCRIPTS,
    )


async def hive_panel(hive: Hive) -> Panel:
    """Every agent's notes size and last compaction."""
    compactor = hive.stash[COMPACTOR]
    last = {run["agent"]: run for run in await compactor.last()}
    rows = [
        {
            "agent": agent.name,
            "size": notes_size(compactor.notes_path(agent.name)),
            "run": _run_context(last.get(agent.name)),
        }
        for agent in hive.agents
    ]
    return Panel(
        key="compaction",
        title="N0T3S C0MP4CT10N",
        label="notes compaction of every agent",
        template="compaction/hive.html",
        context={"rows": rows, "threshold": compactor.settings.threshold_bytes, **OUTCOMES},
        scripts=SCRIPTS,
    )
