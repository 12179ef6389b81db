"""Dashboard panels that plugins contribute, without depending on the dashboard package."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Panel:
    """One section of the host dashboard or of an agent page.

    :param key: unique per page, used as the section's DOM id (``panel-<key>``).
    :param title: the section header as shown, l33t welcome (``M1ND H4S QU3STI0NS``).
    :param label: the title in plain words, for screen readers (``pending questions``).
    :param html: the section's body, server-rendered; escape what you interpolate.
    :param placement: ``top`` (above everything else, for what needs the operator
        now) or ``main``.
    :param order: sorts panels within a placement, lowest first.
    :param scripts: JavaScript files the page loads (served by the dashboard).
    :param styles: CSS files the page loads.
    """

    key: str
    title: str
    label: str
    html: str
    placement: Literal["top", "main"] = "main"
    order: int = 100
    scripts: tuple[Path, ...] = field(default=())
    styles: tuple[Path, ...] = field(default=())
