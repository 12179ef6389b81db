"""Panels that plugins contribute to the host dashboard and agent pages, and their assets."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

from hyperhive_core.names import SYSTEM
from hyperhive_core.panels import Panel
from hyperhive_core.plugins import await_all, callers_by_plugin

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedPanel:
    """A plugin's panel, ready for a template: who made it and the URLs of its assets."""

    plugin: str
    panel: Panel
    scripts: tuple[str, ...]
    styles: tuple[str, ...]

    @property
    def html(self) -> Markup:
        return Markup(self.panel.html)  # noqa: S704 - plugins render their own HTML, escaped by them


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


async def collect_panels(hive: Hive, assets: PanelAssets, agent: str | None = None) -> list[PlacedPanel]:
    """The panels every plugin contributes to the host page (or ``agent``'s page), sorted.

    A plugin whose hook fails, or that reuses another's key, gets an error panel in
    its place: one broken plugin never takes the dashboard down.
    """
    hook, args = ("agent_panels", {"agent": agent}) if agent else ("dashboard_panels", {})
    placed: dict[str, PlacedPanel] = {}
    for plugin, caller in callers_by_plugin(hive.pm, hook):
        try:
            for panels in await await_all(caller(hive=hive, **args)):
                for panel in panels or ():
                    if not isinstance(panel, Panel):
                        raise TypeError(f"returned {type(panel).__name__}, not hyperhive_core.panels.Panel")
                    if panel.key in placed:
                        raise ValueError(f"panel key {panel.key!r} is already used by {placed[panel.key].plugin!r}")
                    placed[panel.key] = PlacedPanel(
                        plugin,
                        panel,
                        tuple(assets.url(plugin, path) for path in panel.scripts),
                        tuple(assets.url(plugin, path) for path in panel.styles),
                    )
        except Exception as exc:
            log.exception("plugin %s failed to render its %s", plugin, hook)
            hive.events.publish(SYSTEM, "error", where=hook, plugin=plugin, error=repr(exc))
            key = f"{plugin}-error"
            placed[key] = PlacedPanel(plugin, error_panel(key, plugin, exc), (), ())
    return sorted(placed.values(), key=lambda placed: (placed.panel.order, placed.panel.key))


def error_panel(key: str, plugin: str, exc: Exception) -> Panel:
    return Panel(
        key=key,
        title=f"{plugin.upper()} P4N3L BR0K3N",
        label=f"the {plugin} plugin's panel failed",
        html=f'<p class="error">the {escape(plugin)} plugin failed to render its panel: '
        f"<code>{escape(repr(exc))}</code>. the daemon log has the traceback.</p>",
        placement="top",
        order=0,
    )
