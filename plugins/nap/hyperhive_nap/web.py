"""The dashboard side: a N4P section on a napping agent's page with a button that wakes it."""

from __future__ import annotations

from pathlib import Path

from hyperhive_core import Panel, iso_utc

STATIC = Path(__file__).parent / "static"
WAKE_ROUTE = "/-/nap/agents/<agent>/wake"


def nap_panel(agent: str, wake_at: float | None, waiting: int) -> Panel:
    """The section on ``agent``'s page; its stylesheet hides it while the agent is awake.

    It is always there, so its script is on the page to bring it back when a nap starts.
    """
    queued = f"{waiting} message{'s' if waiting != 1 else ''} wait{'s' if waiting == 1 else ''} for it"
    return Panel(
        key="nap",
        title="N4P",
        label=f"{agent}'s nap",
        template="nap/panel.html",
        context={"agent": agent, "wake_at": None if wake_at is None else iso_utc(wake_at), "queued": queued},
        placement="top",
        order=20,
        scripts=(STATIC / "nap.js",),
        styles=(STATIC / "nap.css",),
    )
