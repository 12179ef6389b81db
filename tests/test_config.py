"""hyperhive.toml: discovery, typed validation, clear errors, and `init` defaults."""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperhive_core import hookimpl
from hyperhive_core.boot import boot, config_schemas
from hyperhive_core.config import load_config, option, render_default_config, toml_document, toml_value
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


# -- the TOML writer ---------------------------------------------------------------

# Strings TOML is picky about, mixed into the random ones (which hold control characters too).
AWKWARD = [
    "",
    "a\nb",
    'say "hi"',
    "back\\slash",
    "tab\there",
    "\r\n",
    "\x00\x1f\x7f",
    '"""',
    "'''",
    "é ✓ 𝄞",
    "a.b",
    "[x]",
]
STRINGS = st.text() | st.sampled_from(AWKWARD)
# No nan among them: nan != nan, so it has its own test.
SCALARS = STRINGS | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.booleans()
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4), max_leaves=24
)
TREES = st.dictionaries(STRINGS, VALUES, max_size=6)


def typed(value):
    """``value`` with each leaf's type beside it: ``1 == True == 1.0`` must not pass for a round trip."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, repr(value))


@settings(max_examples=300, deadline=None)
@given(TREES)
def test_any_value_tree_round_trips_through_a_toml_document(tree):
    text = toml_document(tree)
    assert typed(tomllib.loads(text)) == typed(tree), text


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_any_value_round_trips_as_an_inline_value(value):
    assert typed(tomllib.loads(f"v = {toml_value(value)}")["v"]) == typed(value)


def test_the_writer_keeps_dotted_keys_and_multi_line_strings_whole():
    tree = {"a.b": {"c.d": "one\ntwo", "e": {"f g": 1}}, "inline": [{"x.y": True}]}
    text = toml_document(tree)
    assert tomllib.loads(text) == tree
    assert '["a.b"]\n"c.d" = "one\\ntwo"\n' in text
    special = tomllib.loads(toml_document({"x": float("nan"), "y": float("-inf")}))
    assert special["x"] != special["x"]
    assert special["y"] == float("-inf")


def test_the_writer_leaves_out_none_in_tables():
    assert toml_document({"a": None, "t": {"b": None, "c": 1}}) == "[t]\nc = 1\n"
    assert toml_value({"b": None}) == "{}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**63, "cannot write 9223372036854775808 as TOML: integers must fit in 64 bits; write it as a string"),
        (["a", None], r"cannot write \['a', None\] as TOML: a list cannot hold a missing value \(None\)"),
        ("x\ud800", r"cannot write 'x\\ud800' as TOML: it holds a lone surrogate; remove it"),
    ],
)
def test_what_toml_cannot_hold_is_a_clear_error(value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        toml_document({"key": value})


def test_only_plain_values_are_written():
    with pytest.raises(TypeError, match="cannot write <object object at"):
        toml_value(object())


# -- range checks in a section's __post_init__ -------------------------------------------


@dataclass
class RangedSection:
    repeat: int = option(1)
    volume: int = option(5)
    mode: str = option("calm")

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"must be at least 1, not {self.repeat}; repeat counts greetings")
        if not 0 <= self.volume <= 10:
            raise ConfigError(f"{self.volume} is out of range; choose 0 to 10", key="volume")
        if self.mode not in ("calm", "loud"):
            raise ConfigError(f"[ranged] mode must be calm or loud, not {self.mode!r}")


class RangedPlugin:
    @hookimpl
    def register_config_sections(self, register):
        register("ranged", RangedSection)


@pytest.mark.parametrize(
    ("table", "message", "key"),
    [
        # a plain ValueError: the key is the first one its message names
        ({"repeat": 0}, "c.toml: [ranged] must be at least 1, not 0; repeat counts greetings", "repeat"),
        # ConfigError(key=...): the key leads the message
        ({"volume": 11}, "c.toml: [ranged] volume: 11 is out of range; choose 0 to 10", "volume"),
        # a message that names its own section, as core's sections do, keeps one section name
        ({"mode": "shrill"}, "c.toml: [ranged] mode must be calm or loud, not 'shrill'", "mode"),
    ],
)
def test_a_range_check_names_the_file_the_section_and_the_key(make_pm, tmp_path, table, message, key):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "c.toml", {"ranged": table}, config_schemas(make_pm(ranged=RangedPlugin())))
    assert str(caught.value) == f"{tmp_path}/{message}"
    assert caught.value.key == key


RANGED_PLUGIN = """
from dataclasses import dataclass

from hyperhive_core import ConfigError, hookimpl, option

hyperhive_api = ">=1.0,<2"


@dataclass
class Ranged:
    repeat: int = option(1, help="How often to greet.")
    volume: int = option(5, help="0 to 10.")

    def __post_init__(self):
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, not {self.repeat}")
        if not 0 <= self.volume <= 10:
            raise ConfigError(f"{self.volume} is out of range; choose 0 to 10", key="volume")


@hookimpl
def register_config_sections(register):
    register("ranged", Ranged)
"""


@pytest.mark.parametrize("command", [["up"], ["debug", "config"]])
@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("repeat = 0", "[ranged] repeat must be at least 1, not 0"),
        ("volume = 11", "[ranged] volume: 11 is out of range; choose 0 to 10"),
    ],
)
def test_a_range_check_stops_the_command_with_one_line(
    tmp_path, clean_env, hyperhive, local_plugin, command, table, error
):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hyperhive_ranged.py").write_text(RANGED_PLUGIN)
    local_plugin("ranged", "hyperhive_ranged", tmp_path / "src")
    config = tmp_path / "hyperhive.toml"
    config.write_text(
        f'[hive]\nstate_dir = "{tmp_path / "state"}"\ncontainer_backend = "process"\nplugins = ["ranged"]\n'
        f"[ranged]\n{table}\n"
    )
    result = subprocess.run(
        [hyperhive, "-q", "-c", str(config), *command],
        env=clean_env | {"PYTHONPATH": os.environ["PYTHONPATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"Error: {config}: {error}"]
    assert not result.stdout
