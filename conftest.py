"""Fixtures shared by every test directory: core, web and each bundled plugin."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperhive_core.boot import config_schemas
from hyperhive_core.config import Config, load_config
from hyperhive_core.plugins import HivePluginManager, make_plugin_manager

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The source tree's root."""
    return REPO


@pytest.fixture(scope="session")
def hyperhive() -> str:
    """The installed ``hyperhive`` command, next to the running interpreter."""
    return str(Path(sys.executable).with_name("hyperhive"))


@pytest.fixture
def make_pm() -> Callable[..., HivePluginManager]:
    """A plugin manager with core's builtins and the given test plugins, by name.

    ``builtin=False`` leaves core's own hook implementations out (its tools, say).
    """

    def build(*, builtin: bool = True, **plugins: object) -> HivePluginManager:
        pm = make_plugin_manager([])
        if not builtin:
            pm.unregister(name="core")
        for name, plugin in plugins.items():
            pm.register(plugin, name=name)
        return pm

    return build


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """A validated config whose state dir is inside ``tmp_path``."""

    def build(pm: HivePluginManager, **sections: dict) -> Config:
        raw = {"hive": {"state_dir": str(tmp_path / "state"), "container_backend": "process"}} | sections
        return load_config(tmp_path / "hyperhive.toml", raw, config_schemas(pm))

    return build


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """An environment for child ``hyperhive`` processes, with no plugin or config overrides."""
    for name in ("HYPERHIVE_LOAD_PLUGINS", "HYPERHIVE_CONFIG", "HYPERHIVE_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return dict(os.environ)
