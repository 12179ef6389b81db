"""The plugin platform: selection, loading errors, clashes, async hooks, tracing."""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import sys

import pytest
import trio
from packaging.specifiers import SpecifierSet

from hyperhive_core import API_VERSION, hookimpl, iso_utc
from hyperhive_core.errors import PluginError
from hyperhive_core.hookspecs import hookspec, removed, renamed
from hyperhive_core.plugins import (
    await_all,
    call_async,
    call_each,
    collect,
    describe_plugins,
    installed_plugins,
    make_plugin_manager,
    plugin_selection,
)
from hyperhive_core.tools import collect_tools

BUNDLED = ["allowlist", "compaction", "crashwatch", "nap", "questions", "telemetry", "tracing", "web"]


def loaded_names(pm) -> list[str]:
    return sorted(info.name for info in describe_plugins(pm) if not info.builtin)


def plugin_declaring(tmp_path, local_plugin, name: str, declaration: str) -> None:
    """An installed plugin ``name`` whose module holds ``declaration`` and one hook."""
    sys.modules.pop(f"hyperhive_{name}", None)  # another test's plugin of that name
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / f"hyperhive_{name}.py").write_text(
        f"from hyperhive_core import hookimpl\n\n{declaration}\n\n\n@hookimpl\ndef on_startup(hive):\n    pass\n"
    )
    local_plugin(name, f"hyperhive_{name}", source)


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


# A plugin that claims a name a bundled one has.
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
def test_a_clash_at_startup_is_the_one_error_even_with_warnings_as_errors(
    tmp_path, local_plugin, clean_env, hyperhive, kind
):
    hook, error = CLASHES[kind]
    plugin_declaring(tmp_path, local_plugin, "clash", f'hyperhive_api = ">=1.0,<2"\n\n\n@hookimpl\ndef {hook}')
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\ncontainer_backend = "process"\n')
    result = subprocess.run(
        [sys.executable, "-W", "error", hyperhive, "-q", "-c", str(config), "up"],
        env=clean_env | {"PYTHONPATH": os.environ["PYTHONPATH"]},
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


# -- versions ----------------------------------------------------------------------


@pytest.mark.parametrize("declared", [">=1.0,<2", "~=1.0", ">=0.9", "==1.*", ""])
def test_a_plugin_whose_range_holds_the_api_loads(tmp_path, local_plugin, caplog, declared):
    plugin_declaring(tmp_path, local_plugin, "fits", f"hyperhive_api = {declared!r}")
    assert loaded_names(make_plugin_manager(["fits"])) == ["fits"]
    assert "does not say which plugin API" not in caplog.text


@pytest.mark.parametrize("declared", [">=2,<3", "<1.0", "==0.9"])
def test_a_plugin_made_for_another_api_stops_startup_naming_it(tmp_path, local_plugin, declared):
    plugin_declaring(tmp_path, local_plugin, "elder", f"hyperhive_api = {declared!r}")
    with pytest.raises(PluginError) as caught:
        make_plugin_manager(["elder"])
    assert str(caught.value) == (
        f"plugin 'elder' works with hyperhive plugin API {declared}, but this hyperhive has API {API_VERSION}. "
        f"Install a release of the plugin made for API {API_VERSION}, or leave it out ([hive] plugins)."
    )


@pytest.mark.parametrize("declared", ["'1.0 or later'", "1.0", "['>=1']"])
def test_a_malformed_range_says_how_to_write_one(tmp_path, local_plugin, declared):
    plugin_declaring(tmp_path, local_plugin, "sloppy", f"hyperhive_api = {declared}")
    with pytest.raises(PluginError, match=r"which is not a version range; .* hyperhive_api = \">=1.0,<2\"$"):
        make_plugin_manager(["sloppy"])


def test_a_plugin_that_does_not_say_loads_with_one_warning(tmp_path, local_plugin, caplog):
    plugin_declaring(tmp_path, local_plugin, "silent", "")
    for _ in range(2):  # every command loads the plugins again; one warning is enough
        assert loaded_names(make_plugin_manager(["silent"])) == ["silent"]
    warnings = [record for record in caplog.records if "does not say which plugin API" in record.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert 'add hyperhive_api = ">=1.0,<2" to its module' in warnings[0].getMessage()


def test_every_bundled_plugin_declares_a_range_that_holds_the_api(caplog):
    assert loaded_names(make_plugin_manager(None)) == BUNDLED
    for name, entry in installed_plugins().items():
        assert API_VERSION in SpecifierSet(getattr(entry.load(), "hyperhive_api", "<0")), name
    assert "does not say which plugin API" not in caplog.text


def test_an_incompatible_plugin_stops_hyperhive_up_with_one_line(tmp_path, local_plugin, clean_env, hyperhive):
    plugin_declaring(tmp_path, local_plugin, "elder", 'hyperhive_api = ">=2"')
    config = tmp_path / "hyperhive.toml"
    config.write_text(
        f'[hive]\nstate_dir = "{tmp_path / "state"}"\ncontainer_backend = "process"\nplugins = ["elder"]\n'
    )
    result = subprocess.run(
        [hyperhive, "-q", "-c", str(config), "up"],
        env=clean_env | {"PYTHONPATH": os.environ["PYTHONPATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"Error: plugin 'elder' works with hyperhive plugin API >=2, but this hyperhive has API {API_VERSION}. "
        f"Install a release of the plugin made for API {API_VERSION}, or leave it out ([hive] plugins)."
    ]


# -- deprecated hooks ---------------------------------------------------------------


class DeprecatedSpecs:
    """Hooks as a later API might deprecate them: one renamed to on_startup, one no longer called."""

    @renamed("on_startup", since="1.0")
    def on_begin(self, hive):
        """The old name of on_startup."""

    @renamed("on_startup", since="1.0")
    def on_begin_with(self, hive, mood):
        """An old name whose argument the new hook does not pass."""

    @removed(since="1.0", instead="Use on_startup.")
    def on_prepare(self, hive):
        """A hook core stopped calling."""


@pytest.fixture
def deprecating_pm(make_pm):
    """A plugin manager without core's hooks, and with the deprecated specs above."""
    pm = make_pm(builtin=False)
    pm.add_hookspecs(DeprecatedSpecs)
    return pm


class OldStyle:
    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    @hookimpl
    def on_begin(self, hive):
        self.ran.append(f"old {hive}")
        return "old"


class NewStyle(OldStyle):
    on_begin = None  # this one has moved on

    @hookimpl
    def on_startup(self, hive):
        self.ran.append(f"new {hive}")
        return "new"


async def test_a_renamed_hook_warns_its_implementer_and_is_still_called(deprecating_pm):
    ran: list[str] = []
    pm = deprecating_pm
    pm.register(NewStyle(ran), name="new")
    with pytest.warns(DeprecationWarning, match="renamed") as caught:
        pm.register(OldStyle(ran), name="old")
    (warning,) = caught
    assert str(warning.message) == (
        "the hook on_begin is renamed on_startup as of hyperhive plugin API 1.0, and the old name goes in API 2.0: "
        "rename the implementation"
    )
    assert warning.filename == __file__  # pluggy points at the implementation
    await call_async(pm, "on_startup", hive="h")
    assert sorted(ran) == ["new h", "old h"]
    assert sorted(call_each(pm, "on_startup", hive="i")) == [("new", "new"), ("old", "old")]
    assert sorted(pm.hook.on_startup(hive="j")) == ["new", "old"]
    assert sorted(ran[2:]) == ["new i", "new j", "old i", "old j"]
    pm.unregister(name="old")
    assert [impl.plugin_name for impl in pm.hook.on_startup.get_hookimpls()] == ["new"]


def test_a_renamed_hook_whose_argument_is_gone_is_refused(deprecating_pm):
    class Moody:
        @hookimpl
        def on_begin_with(self, hive, mood):
            pass

    pm = deprecating_pm
    with pytest.warns(DeprecationWarning, match="on_begin_with is renamed on_startup"), pytest.raises(PluginError) as e:
        pm.register(Moody(), name="moody")
    assert str(e.value) == (
        "plugin 'moody' implements on_begin_with, now on_startup, with mood, which on_startup does not pass; "
        "rename it to on_startup and take only hive"
    )
    assert pm.get_plugin("moody") is None


def test_a_removed_hook_warns_its_implementer(deprecating_pm):
    class Preparer:
        @hookimpl
        def on_prepare(self, hive):
            pass

    pm = deprecating_pm
    with pytest.warns(DeprecationWarning, match=r"^the hook on_prepare is deprecated as of hyperhive plugin API 1\.0"):
        pm.register(Preparer(), name="preparer")


def test_a_deprecated_argument_warns_through_pluggy(make_pm):
    """The way docs/plugins.md#versions gives for an argument on its way out."""

    class Specs:
        @hookspec(warn_on_impl_args={"old": DeprecationWarning("on_thing's old goes in API 2.0; use new")})
        def on_thing(self, new, old):
            pass

    class UsesOld:
        @hookimpl
        def on_thing(self, old):
            pass

    pm = make_pm(builtin=False)
    pm.add_hookspecs(Specs)  # a spec of its own: pluggy's warn_on_impl_args, no hyperhive helper
    with pytest.warns(DeprecationWarning, match="on_thing's old goes in API 2.0; use new"):
        pm.register(UsesOld(), name="uses-old")
