"""Recent crash bursts as dashboard panels: every agent's on ``/``, one agent's on its page."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hyperhive_core import Panel, iso_utc

TITLE = "CR4SH W4TCH"
LABEL = "container crashes"
SHOWN = 10
"""Bursts a panel lists, newest first."""
SCRIPT = Path(__file__).parent / "static" / "crashwatch.js"
"""Re-renders the panel on the ``crashwatch.*`` live events, through the dashboard's ``hyperhive`` API."""


def crash_panel(rows: Sequence[dict[str, Any]], in_burst: Callable[[str], bool], *, agent: str | None) -> Panel:
    """The panel for ``rows`` (newest first): every agent's when ``agent`` is None, else that agent's.

    Shown even with no rows, so its script is there for the first crash. It goes to the top
    of the page while a listed agent is crashing, so the operator sees it first.
    """
    bursts = [
        {
            "agent": row["agent"],
            "count": row["count"],
            "looping": in_burst(row["agent"]),
            "first_at": iso_utc(row["first_at"]),
            "last_at": iso_utc(row["last_at"]),
            "detail": row["detail"],
            "log": json.loads(row["log_tail"]),
        }
        for row in rows
    ]
    return Panel(
        key="crashwatch" if agent is None else "crashwatch-agent",
        title=TITLE,
        label=LABEL if agent is None else f"container crashes of {agent}",
        template="crashwatch/panel.html",
        context={"bursts": bursts, "show_agent": agent is None},
        placement="top" if any(burst["looping"] for burst in bursts) else "main",
        scripts=(SCRIPT,),
    )
