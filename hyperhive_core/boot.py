"""Turn a config path into a validated config and a loaded plugin manager."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyperhive_core.config import Config, load_config
from hyperhive_core.configfile import configured_plugins, find_config, read_toml
from hyperhive_core.plugins import (
    HivePluginManager,
    collect,
    installed_plugins,
    make_plugin_manager,
    plugin_selection,
)


@dataclass
class Booted:
    config: Config
    pm: HivePluginManager


def config_schemas(pm: HivePluginManager) -> dict[str, type]:
    """Every config section the loaded plugins declare, by name."""
    return collect(pm, "register_config_sections", "config section", lambda name, schema: (name, schema)).items


def boot(explicit_config: str | Path | None) -> Booted:
    """Find and read the config, load the plugins it selects, then validate it all.

    :raises ConfigError: the file is unreadable, or has an unknown key or wrong type.
    :raises PluginError: a selected plugin is missing, or two plugins clash.
    """
    path, required = find_config(explicit_config)
    raw = read_toml(path, required)
    selection, source = plugin_selection(configured_plugins(path, raw))
    pm = make_plugin_manager(selection, f"{source} in {path}" if source == "[hive] plugins" else source)
    loaded = {name for name, _ in pm.list_name_plugin()}
    config = load_config(path, raw, config_schemas(pm), ignored=frozenset(installed_plugins()) - loaded)
    return Booted(config, pm)
