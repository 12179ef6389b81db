"""The dashboard side: a N4P section on a napping agent's page with a button that wakes it."""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

from hyperhive_core import iso_utc
from hyperhive_core.panels import Panel

STATIC = Path(__file__).parent / "static"
WAKE_ROUTE = "/-/nap/agents/<agent>/wake"


def nap_panel(agent: str, wake_at: float | None, waiting: int) -> Panel:
    """The section on ``agent``'s page; its stylesheet hides it while the agent is awake.

    It is always there, so its script is on the page to bring it back when a nap starts.
    """
    if wake_at is None:
        html = '<p class="nap nap-awake">awake.</p>'
    else:
        label, name = iso_utc(wake_at), escape(agent)
        queued = f"{waiting} message{'s' if waiting != 1 else ''} wait{'s' if waiting == 1 else ''} for it"
        html = (
            f'<div class="nap"><p>napping until <time datetime="{label}">{label}</time> · {queued}.</p>'
            f'<button type="button" class="go" data-api="/-/nap/agents/{quote(agent)}/wake" '
            f'data-done="{name} is awake" aria-label="wake {name} now">☀ W4K3 N0W</button></div>'
        )
    return Panel(
        key="nap",
        title="N4P",
        label=f"{agent}'s nap",
        html=html,
        placement="top",
        order=20,
        scripts=(STATIC / "nap.js",),
        styles=(STATIC / "nap.css",),
    )
