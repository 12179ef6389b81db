"""The plugin platform: selection, loading errors, clashes, async hooks, tracing."""

from __future__ import annotations

import datetime
import subprocess

import pytest
import trio

from hyperhive_core import hookimpl, iso_utc
from hyperhive_core.errors import PluginError
from hyperhive_core.plugins import (
    await_all,
    call_each,
    collect,
    describe_plugins,
    make_plugin_manager,
    plugin_selection,
)
from hyperhive_core.tools import collect_tools

BUNDLED = ["allowlist", "compaction", "crashwatch", "nap", "questions", "telemetry", "web"]


def loaded_names(pm) -> list[str]:
    return sorted(info.name for info in describe_plugins(pm) if not info.builtin)


def test_all_installed_plugins_load_by_default(monkeypatch):
    monkeypatch.delenv("HYPERHIVE_LOAD_PLUGINS", raising=False)
    selection, source = plugin_selection(None)
    assert (selection, source) == (None, "default")
    assert loaded_names(make_plugin_manager(selection)) == BUNDLED


@pytest.mark.parametrize(
    ("env", "configured", "expected"),
    [
        ("", ["nap"], []),  # empty env means none, even when config names some
        ("nap, web", None, ["nap", "web"]),
        (None, ["questions"], ["questions"]),
    ],
)
def test_selection_env_overrides_config(monkeypatch, env, configured, expected):
    if env is None:
        monkeypatch.delenv("HYPERHIVE_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("HYPERHIVE_LOAD_PLUGINS", env)
    selection, _ = plugin_selection(configured)
    assert loaded_names(make_plugin_manager(selection)) == expected


@pytest.mark.parametrize("name", BUNDLED)
def test_each_bundled_plugin_loads_alone(name):
    pm = make_plugin_manager([name])
    (info,) = [info for info in describe_plugins(pm) if not info.builtin]
    assert info.name == name
    assert info.distribution == f"hyperhive-{name}"
    assert info.version == "0.1.0"


def test_missing_plugin_names_it_and_lists_installed():
    with pytest.raises(PluginError) as caught:
        make_plugin_manager(["nap", "no-such-plugin"], "[hive] plugins in x.toml")
    message = str(caught.value)
    assert "'no-such-plugin'" in message
    assert "[hive] plugins in x.toml" in message
    assert "Installed plugins: " + ", ".join(BUNDLED) in message


def test_duplicate_registration_names_both_plugins(make_pm):
    class First:
        @hookimpl
        def register_tools(self, register):
            register(lambda: "a", name="shout")

    class Second:
        @hookimpl
        def register_tools(self, register):
            register(lambda: "b", name="shout")

    pm = make_pm(first=First(), second=Second())
    with pytest.raises(PluginError, match="tool 'shout' is registered by both 'first' and 'second'"):
        collect_tools(pm)


async def test_async_hook_results_are_awaited(make_pm):
    class Slow:
        @hookimpl
        async def on_startup(self, hive):
            await trio.sleep(0)
            return f"async {hive}"

    class Plain:
        @hookimpl
        def on_startup(self, hive):
            return f"sync {hive}"

    pm = make_pm(slow=Slow(), plain=Plain())
    assert sorted(await await_all(pm.hook.on_startup(hive="h"))) == ["async h", "sync h"]


def test_call_each_attributes_results_to_plugins(make_pm):
    class One:
        @hookimpl
        def hive_services(self, hive):
            return ["one"]

    class Two:
        @hookimpl
        def hive_services(self, hive):
            return ["two"]

    pm = make_pm(builtin=False, one=One(), two=Two())
    assert sorted(call_each(pm, "hive_services", hive=None)) == [("one", ["one"]), ("two", ["two"])]


def test_collect_gathers_every_plugin(make_pm):
    class Routes:
        @hookimpl
        def register_routes(self, register):
            register("/-/routes/a", "view-a")
            register("/-/routes/b", "view-b")

    registry = collect(make_pm(routes=Routes()), "register_routes", "route", lambda rule, view: (rule, view))
    assert dict(registry.items) == {"/-/routes/a": "view-a", "/-/routes/b": "view-b"}
    assert registry.owners["/-/routes/a"] == "routes"


def test_trace_env_prints_hook_calls(clean_env, hyperhive):
    env = clean_env | {"HYPERHIVE_TRACE_PLUGINS": "1", "HYPERHIVE_LOAD_PLUGINS": "nap"}
    result = subprocess.run([hyperhive, "plugins"], env=env, capture_output=True, text=True, check=True)
    assert "[plugin trace]" in result.stderr
    assert "register_config_sections" in result.stderr


PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))


@pytest.mark.parametrize(
    ("moment", "shown"),
    [
        (datetime.datetime(2026, 11, 22, 12, 30, 5, 900_000, tzinfo=datetime.UTC), "2026-11-22T12:30:05Z"),
        (datetime.datetime(2027, 1, 1, 1, 0, tzinfo=PLUS_TWO), "2026-12-31T23:00:00Z"),
    ],
)
def test_iso_utc_writes_a_moment_in_utc_to_the_second(moment, shown):
    assert iso_utc(moment.timestamp()) == shown
    assert datetime.datetime.fromisoformat(shown) == moment.replace(microsecond=0)
