"""The plugin platform: selection, loading errors, clashes, async hooks, tracing."""

from __future__ import annotations

import datetime
import gc
import subprocess
import sys

import pytest
import trio

from hyperhive_core import hookimpl, iso_utc
from hyperhive_core.errors import PluginError
from hyperhive_core.plugins import (
    await_all,
    call_async,
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


# A plugin that claims a name a bundled one has, installed as a distribution on PYTHONPATH.
CLASHES = {
    "tool": (
        'register_tools(register):\n    register(lambda: "z", name="nap")',
        "tool 'nap' is registered by both ",
    ),
    "slash command": (  # found as the dashboard starts, in the middle of on_startup
        'register_slash_commands(register):\n    register("cancel", lambda hive, agent, args: "", help="x")',
        "slash command 'cancel' is registered by both 'web' and 'clash'",
    ),
    "route": (
        'register_routes(register):\n    register("/-/nap/agents/<agent>/wake", lambda hive: "", methods=("POST",))',
        "route 'POST /-/nap/agents/<agent>/wake' is registered by both",
    ),
}


@pytest.mark.parametrize("kind", CLASHES)
def test_a_clash_at_startup_is_the_one_error_even_with_warnings_as_errors(tmp_path, clean_env, hyperhive, kind):
    hook, error = CLASHES[kind]
    site = tmp_path / "site"
    (site / "hyperhive_clash-1.0.dist-info").mkdir(parents=True)
    (site / "hyperhive_clash-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hyperhive-clash\nVersion: 1.0\n"
    )
    (site / "hyperhive_clash-1.0.dist-info" / "entry_points.txt").write_text("[hyperhive]\nclash = hyperhive_clash\n")
    (site / "hyperhive_clash.py").write_text(f"from hyperhive_core import hookimpl\n\n@hookimpl\ndef {hook}\n")
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\ncontainer_backend = "process"\n')
    result = subprocess.run(
        [sys.executable, "-W", "error", hyperhive, "-q", "-c", str(config), "up"],
        env=clean_env | {"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"Error: {error}"), result.stderr
    assert "never awaited" not in result.stderr
    assert "Exception ignored" not in result.stderr


async def test_a_hook_that_raises_leaves_no_coroutine_unawaited(make_pm):
    """Both ways of calling an async hook; the suite turns the "never awaited" warning into an error."""
    ran = []

    class Fails:
        @hookimpl
        def on_startup(self, hive):
            raise PluginError("clash")

    class Slow:
        @hookimpl
        async def on_startup(self, hive):
            ran.append(hive)

    pm = make_pm(slow=Slow(), fails=Fails(), later=Slow())  # pluggy calls 'later' first, 'slow' last
    with pytest.raises(PluginError, match="clash"):
        await call_async(pm, "on_startup", hive="h")
    assert ran == ["h"]  # 'later' ran before the failure; 'slow' was never called

    class Raises:
        @hookimpl
        async def on_startup(self, hive):
            raise PluginError("async clash")

    with pytest.raises(PluginError, match="async clash"):
        await await_all(make_pm(slow=Slow(), raises=Raises()).hook.on_startup(hive="h2"))
    gc.collect()  # the closed coroutine is collected here, inside the test, and warns of nothing
    assert ran == ["h"]
