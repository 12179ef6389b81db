"""Dashboard panels that plugins contribute, without depending on the dashboard package."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Panel:
    """One section of the host dashboard or of an agent page.

    :param key: unique per page, used as the section's DOM id (``panel-<key>``).
    :param title: the section header as shown, l33t welcome (``M1ND H4S QU3STI0NS``).
    :param label: the title in plain words, for screen readers (``pending questions``).
    :param template: the section's body as a Jinja2 template, ``<plugin>/<file>``: the file
        ``templates/<file>`` beside the plugin's module (or in its package), rendered by the
        dashboard with autoescape. ``context`` holds its variables.
    :param html: instead of a template, a body the plugin rendered itself (a
        ``markupsafe.Markup``, or text it escaped).
    :param placement: ``top`` (above everything else, for what needs the operator
        now) or ``main``.
    :param order: sorts panels within a placement, lowest first.
    :param scripts: JavaScript files the page loads (served by the dashboard).
    :param styles: CSS files the page loads.
    """

    key: str
    title: str
    label: str
    html: str = ""
    template: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    placement: Literal["top", "main"] = "main"
    order: int = 100
    scripts: tuple[Path, ...] = field(default=())
    styles: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        if bool(self.html) == bool(self.template):
            raise ValueError(f"panel {self.key!r}: give it a template (with its context) or html, not both or neither")
