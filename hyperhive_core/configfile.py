"""Finding and reading ``hyperhive.toml``, and the ``[hive]`` keys needed before plugins load.

Validating the whole file (``hyperhive_core.config``) needs every loaded plugin's
section schema, so it imports every plugin: the dashboard's web stack, MCP, and the
rest. Two things must be known before or without that: which plugins to load, and
where the running daemon's host socket is. This module reads just those keys from
the raw file, with the standard library only, so commands that only talk to the
daemon (``hyperhive send``, ``status``, ...) start about as fast as Python itself.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from hyperhive_core.errors import ConfigError

CONFIG_ENV = "HYPERHIVE_CONFIG"
DEFAULT_CONFIG_NAME = "hyperhive.toml"


def find_config(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """Where the config lives: ``--config``, then ``$HYPERHIVE_CONFIG``, then ``./hyperhive.toml``.

    :return: the path, and whether the user named it (a named file must exist).
    """
    if explicit:
        return Path(explicit), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return Path(DEFAULT_CONFIG_NAME), False


def read_toml(path: Path, required: bool) -> dict[str, Any]:
    """Parse the file, or return ``{}`` when an unnamed default file is absent."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"config file {path} does not exist; create one with `hyperhive init --config {path}`"
            ) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # a damaged or binary file: TOML is UTF-8
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); rewrite it as UTF-8 TOML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def configured_plugins(path: Path, raw: dict[str, Any]) -> list[str] | None:
    """``[hive] plugins`` from the raw file, checked just enough to pick plugins."""
    hive = raw.get("hive", {})
    plugins = hive.get("plugins") if isinstance(hive, dict) else None
    if plugins is not None and not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
        raise ConfigError(f"{path}: hive.plugins must be a list of plugin names, not {plugins!r}")
    return plugins


def configured_state_dir(path: Path, raw: dict[str, Any]) -> Path | None:
    """``[hive] state_dir`` from the raw file, as the full validation reads it; None when unset."""
    hive = raw.get("hive", {})
    if not isinstance(hive, dict):
        raise ConfigError(f"{path}: [hive] must be a table, not {hive!r}")
    state_dir = hive.get("state_dir")
    if state_dir is None:
        return None
    if not isinstance(state_dir, str):
        raise ConfigError(f'{path}: hive.state_dir must be a path string like "/var/lib/hyperhive", not {state_dir!r}')
    return Path(state_dir).expanduser()
