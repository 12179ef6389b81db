"""Panels that plugins contribute to the host dashboard and agent pages, and their assets."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import TemplateNotFound
from markupsafe import Markup
from quart import render_template

from hyperhive_core import SYSTEM, HyperhiveError, Panel, await_all, callers_by_plugin
from hyperhive_web.templates import missing_template

if TYPE_CHECKING:
    from hyperhive_web.dashboard import Dashboard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedPanel:
    """A plugin's panel, ready for a page: who made it, its body, and the URLs of its assets."""

    plugin: str
    panel: Panel
    html: Markup
    scripts: tuple[str, ...]
    styles: tuple[str, ...]


class PanelAssets:
    """The files panels asked pages to load; only those are served."""

    def __init__(self) -> None:
        self._files: dict[str, Path] = {}

    def url(self, plugin: str, path: Path) -> str:
        path = Path(path).resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        key = f"{plugin}/{digest}/{path.name}"
        self._files[key] = path
        return f"/-/web/assets/{key}"

    def find(self, key: str) -> Path | None:
        return self._files.get(key)


async def collect_panels(dashboard: Dashboard, agent: str | None = None) -> list[PlacedPanel]:
    """The panels every plugin contributes to the host page (or ``agent``'s page), rendered and sorted.

    A plugin whose hook or template fails, or that reuses another's key, gets an
    error panel in its place: one broken plugin never takes the dashboard down.
    """
    hive = dashboard.hive
    hook, args = ("agent_panels", {"agent": agent}) if agent else ("dashboard_panels", {})
    placed: dict[str, PlacedPanel] = {}
    for plugin, caller in callers_by_plugin(hive.pm, hook):
        try:
            for panels in await await_all(caller(hive=hive, **args)):
                for panel in panels or ():
                    if not isinstance(panel, Panel):
                        raise TypeError(f"returned {type(panel).__name__}, not hyperhive_core.Panel")
                    if panel.key in placed:
                        raise ValueError(f"panel key {panel.key!r} is already used by {placed[panel.key].plugin!r}")
                    placed[panel.key] = await place(dashboard, plugin, panel)
        except Exception as exc:
            log.exception("plugin %s failed to render its %s", plugin, hook)
            hive.events.publish(SYSTEM, "error", where=hook, plugin=plugin, error=repr(exc))
            key = f"{plugin}-error"
            placed[key] = await place(dashboard, plugin, error_panel(key, plugin, exc))
    return sorted(placed.values(), key=lambda placed: (placed.panel.order, placed.panel.key))


async def place(dashboard: Dashboard, plugin: str, panel: Panel) -> PlacedPanel:
    return PlacedPanel(
        plugin,
        panel,
        await panel_body(panel, dashboard),
        tuple(dashboard.assets.url(plugin, path) for path in panel.scripts),
        tuple(dashboard.assets.url(plugin, path) for path in panel.styles),
    )


async def panel_body(panel: Panel, dashboard: Dashboard) -> Markup:
    """The panel's HTML: its template rendered (autoescaped) with its context, or the HTML it brought."""
    if panel.template is None:
        return Markup(panel.html)  # noqa: S704 - a plugin's own HTML, escaped by it
    try:
        return Markup(await render_template(panel.template, **panel.context))  # noqa: S704 - autoescaped
    except TemplateNotFound as missing:
        name = missing.name if isinstance(missing.name, str) else panel.template
        raise HyperhiveError(missing_template(name, dashboard.template_dirs)) from None


def error_panel(key: str, plugin: str, exc: Exception) -> Panel:
    return Panel(
        key=key,
        title=f"{plugin.upper()} P4N3L BR0K3N",
        label=f"the {plugin} plugin's panel failed",
        template="panel_error.html",
        context={"plugin": plugin, "error": repr(exc)},
        placement="top",
        order=0,
    )
