"""hyperhive.toml: discovery, typed validation, clear errors, and `init` defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperhive_core import hookimpl
from hyperhive_core.boot import boot, config_schemas
from hyperhive_core.config import load_config, option, render_default_config
from hyperhive_core.configfile import find_config, read_toml
from hyperhive_core.errors import ConfigError
from hyperhive_core.paths import default_state_dir


@dataclass
class GreetSection:
    """A test plugin's section."""

    greeting: str = option("hello", help="What to say.")
    repeat: int = option(1, help="How often.")
    ratio: float = option(0.5)
    loud: bool = option(False)
    targets: list[str] = option(["operator"])
    home: Path | None = option(None)


class GreetPlugin:
    @hookimpl
    def register_config_sections(self, register):
        register("greet", GreetSection)


def schemas(make_pm):
    return config_schemas(make_pm(greet=GreetPlugin()))


def test_hook_register_config_sections(make_pm, tmp_path):
    raw = {"greet": {"greeting": "hi", "repeat": 3, "ratio": 2, "targets": ["a", "b"], "home": "~/x"}}
    config = load_config(tmp_path / "c.toml", raw, schemas(make_pm))
    section = config.section("greet")
    assert section == GreetSection("hi", 3, 2.0, False, ["a", "b"], Path("~/x").expanduser())
    assert config.section("hive").plugins is None  # core's own section, defaults filled in


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"greet": {"greting": "x"}}, "c.toml: unknown key greet.greting. Valid keys in [greet]: greeting, home,"),
        ({"greet": {"repeat": "3"}}, "c.toml: greet.repeat must be an integer, not a string ('3')"),
        ({"greet": {"repeat": True}}, "greet.repeat must be an integer, not true or false"),
        ({"greet": {"loud": 1}}, "greet.loud must be true or false, not an integer"),
        ({"greet": {"targets": ["a", 2]}}, "greet.targets[1] must be a string, not an integer"),
        ({"greet": {"targets": "a"}}, "greet.targets must be a list of strings, not a string"),
        ({"greet": 3}, "[greet] must be a table"),
        ({"gret": {}}, "c.toml: unknown section [gret]. Known sections: [agents], [broker], [bwrap], [claude],"),
    ],
)
def test_bad_config_names_key_and_file(make_pm, tmp_path, raw, message):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "c.toml", raw, schemas(make_pm))
    assert message in str(caught.value)


def test_sections_of_unloaded_plugins_are_left_alone(make_pm, tmp_path):
    config = load_config(tmp_path / "c.toml", {"nap": {"anything": 1}}, schemas(make_pm), ignored=frozenset({"nap"}))
    assert "nap" not in config.sections


def test_find_config_order(monkeypatch, tmp_path):
    monkeypatch.delenv("HYPERHIVE_CONFIG", raising=False)
    assert find_config(None) == (Path("hyperhive.toml"), False)
    monkeypatch.setenv("HYPERHIVE_CONFIG", str(tmp_path / "env.toml"))
    assert find_config(None) == (tmp_path / "env.toml", True)
    assert find_config(tmp_path / "flag.toml") == (tmp_path / "flag.toml", True)


def test_missing_default_file_means_defaults_but_named_file_must_exist(tmp_path):
    assert read_toml(tmp_path / "absent.toml", required=False) == {}
    with pytest.raises(ConfigError, match="does not exist; create one with `hyperhive init"):
        read_toml(tmp_path / "absent.toml", required=True)


def test_malformed_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[hive\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        read_toml(path, required=True)


def test_default_state_dir(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/hyperhive")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert default_state_dir() == Path("/data/hyperhive")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_state_dir() == Path.home() / ".local/share/hyperhive"


def test_default_config_is_commented_and_loads_back(make_pm, tmp_path):
    text = render_default_config(schemas(make_pm))
    assert text.index("[hive]") < text.index("[greet]")
    assert '# What to say.\n# greeting = "hello"' in text
    assert '# targets = ["operator"]' in text
    raw = tomllib.loads(text)
    assert raw["greet"] == {}  # every key commented: the defaults apply
    assert all(section == {} for section in raw.values())
    uncommented = tomllib.loads(text.replace("# greeting =", "greeting =").replace("# repeat =", "repeat ="))
    assert load_config(tmp_path / "c.toml", uncommented, schemas(make_pm)).section("greet").repeat == 1


def test_boot_reads_plugins_from_config(monkeypatch, tmp_path):
    monkeypatch.delenv("HYPERHIVE_LOAD_PLUGINS", raising=False)
    path = tmp_path / "hyperhive.toml"
    path.write_text('[hive]\nplugins = ["nap"]\n[telemetry]\nignored = "because telemetry is not loaded"\n')
    booted = boot(path)
    assert [name for name, _ in booted.pm.list_name_plugin()] == ["core", "nap"]
    path.write_text('[hive]\nplugins = "nap"\n')
    with pytest.raises(ConfigError, match="hive.plugins must be a list of plugin names"):
        boot(path)
