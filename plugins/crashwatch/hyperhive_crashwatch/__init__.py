"""hyperhive-crashwatch: agents' container crashes, reported to the manager once per burst.

On a ``crashed`` container event the manager gets a ``container_crash`` hive event
(the agent, its exit status or unit result, its last log lines, a count); a restart
loop is one burst, so it costs the manager one report and one follow-up. Crashes are
kept in ``crashwatch_crashes``, shown on the dashboard, and published live as
``crashwatch.crash``. Restarting stays the daemon's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from hyperhive_core import ContainerEvent, ContainerEventKind, Panel, StashKey, hookimpl
from hyperhive_crashwatch import records
from hyperhive_crashwatch.bursts import EVENT, Crashwatch
from hyperhive_crashwatch.config import CrashwatchSection
from hyperhive_crashwatch.panels import SHOWN, crash_panel

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive

__all__ = ["CRASHWATCH", "EVENT", "Crashwatch", "CrashwatchSection"]

CRASHWATCH = StashKey[Crashwatch]("crashwatch")
"""The hive's crash bursts in ``hive.stash``, loaded at startup."""


def crashwatch_of(hive: Hive) -> Crashwatch:
    """The hive's crash bursts, loaded at startup."""
    return hive.stash[CRASHWATCH]


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("crashwatch", CrashwatchSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("crashwatch", records.MIGRATIONS)


@hookimpl
async def on_startup(hive: Hive) -> None:
    hive.stash[CRASHWATCH] = await Crashwatch.load(hive)


@hookimpl
async def on_shutdown(hive: Hive) -> None:
    await crashwatch_of(hive).save()


@hookimpl
def hive_services(hive: Hive) -> Iterable[Callable[..., Any]]:
    return [crashwatch_of(hive).serve]


@hookimpl
def on_container_event(hive: Hive, event: ContainerEvent) -> None:
    if event.kind is ContainerEventKind.CRASHED:
        crashwatch_of(hive).crashed(event)


@hookimpl
async def on_agent_purged(hive: Hive, agent: str) -> None:
    await crashwatch_of(hive).forget(agent)


@hookimpl
async def dashboard_panels(hive: Hive) -> list[Panel]:
    return await _panels(hive, None)


@hookimpl
async def agent_panels(hive: Hive, agent: str) -> list[Panel]:
    return await _panels(hive, agent)


async def _panels(hive: Hive, agent: str | None) -> list[Panel]:
    rows = await hive.store.read(partial(records.recent, agent, SHOWN))
    return [crash_panel(rows, crashwatch_of(hive).in_burst, agent=agent)]
