"""Core's own defaults, registered through the same hooks a third party uses."""

from __future__ import annotations

from collections.abc import Callable

from hyperhive_core.daemon import HiveSection
from hyperhive_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("hive", HiveSection)
