"""hyperhive-web: the operator dashboard, a QuartTrio app served inside the daemon.

It is a plugin like any other: its ``[web]`` section, its service, the built-in
slash commands (through the same hook plugins use) and the ``attach`` and
``dashboard`` commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from hyperhive_core import Service, hookimpl
from hyperhive_web.dashboard import DASHBOARD, Dashboard, dashboard_of
from hyperhive_web.settings import WebSection
from hyperhive_web.slash import BUILTIN_COMMANDS

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive

__all__ = ["DASHBOARD", "Dashboard", "WebSection", "dashboard_of"]


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("web", WebSection)


@hookimpl
def on_startup(hive: Hive) -> None:
    hive.stash[DASHBOARD] = Dashboard(hive)


@hookimpl
def hive_services(hive: Hive) -> Iterable[Service]:
    return [dashboard_of(hive).serve]


@hookimpl(trylast=True)
def register_slash_commands(register: Callable[..., None]) -> None:
    for name, (handler, help_text) in BUILTIN_COMMANDS.items():
        register(name, handler, help=help_text)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from hyperhive_web.attach import attach, dashboard

    cli.add_command(attach)
    cli.add_command(dashboard)
