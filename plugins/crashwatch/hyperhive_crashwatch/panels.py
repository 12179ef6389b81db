"""Recent crash bursts as dashboard panels: every agent's on ``/``, one agent's on its page."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hyperhive_core import iso_utc
from hyperhive_core.panels import Panel

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
    looping = any(in_burst(row["agent"]) for row in rows)
    header = "" if agent else '<th scope="col">agent</th>'
    body = "".join(_row(row, in_burst(row["agent"]), show_agent=agent is None) for row in rows)
    html = (
        '<table class="crashwatch">'
        f'<thead><tr>{header}<th scope="col">crashes</th><th scope="col">first</th>'
        '<th scope="col">last</th><th scope="col">last status</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
        if rows
        else '<p class="hint">no container crashes recorded.</p>'
    )
    return Panel(
        key="crashwatch" if agent is None else "crashwatch-agent",
        title=TITLE,
        label=LABEL if agent is None else f"container crashes of {agent}",
        html=html,
        placement="top" if looping else "main",
        scripts=(SCRIPT,),
    )


def _row(row: dict[str, Any], looping: bool, *, show_agent: bool) -> str:
    agent = escape(row["agent"])
    state = ' <span class="crashwatch-looping">crashing now</span>' if looping else ""
    cells = f'<td><a href="/agent/{quote(row["agent"])}/">{agent}</a></td>' if show_agent else ""
    cells += f"<td>{row['count']}{state}</td><td>{_time(row['first_at'])}</td><td>{_time(row['last_at'])}</td>"
    cells += f"<td>{escape(row['detail'])}</td>"
    lines = json.loads(row["log_tail"])
    log = (
        f'<tr class="crashwatch-log"><td colspan="{5 if show_agent else 4}"><details>'
        f"<summary>last log lines</summary><pre>{escape(chr(10).join(lines))}</pre></details></td></tr>"
        if lines
        else ""
    )
    return f'<tr data-agent="{agent}">{cells}</tr>{log}'


def _time(at: float) -> str:
    label = iso_utc(at)
    return f'<time datetime="{label}">{label}</time>'
