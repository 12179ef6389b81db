"""The register_* hooks that later subsystems consume: collected once, clashes caught."""

from __future__ import annotations

import pytest

from hyperhive_core import hookimpl
from hyperhive_core.errors import PluginError
from hyperhive_core.plugins import collect
from hyperhive_core.tools import collect_tools


def test_hook_register_tools(make_pm):
    class Tools:
        @hookimpl
        def register_tools(self, register):
            def greet(name: str) -> str:
                return f"hi {name}"

            register(greet)
            register(greet, name="manager_greet", roles=["manager"])

    tools = collect_tools(make_pm(builtin=False, tools=Tools()))
    assert sorted(tools) == ["greet", "manager_greet"]
    assert tools["greet"].allowed_for("agent")
    assert not tools["manager_greet"].allowed_for("agent")
    assert tools["manager_greet"].fn("x") == "hi x"


def test_tool_with_unknown_role_is_refused(make_pm):
    class Tools:
        @hookimpl
        def register_tools(self, register):
            register(print, roles=["admin"])

    with pytest.raises(PluginError, match=r"tool 'print' names unknown roles \['admin'\]"):
        collect_tools(make_pm(tools=Tools()))


def test_hook_register_container_backends(make_pm):
    def plugin(factory):
        class Backend:
            @hookimpl
            def register_container_backends(self, register):
                register("jail", factory)

        return Backend()

    pm = make_pm(one=plugin("factory-1"))
    backends = collect(pm, "register_container_backends", "container backend", lambda name, f: (name, f))
    assert backends["jail"] == "factory-1"
    pm.register(plugin("factory-2"), name="two")
    with pytest.raises(PluginError, match="container backend 'jail' is registered by both 'one' and 'two'"):
        collect(pm, "register_container_backends", "container backend", lambda name, f: (name, f))


def test_hook_register_routes(make_pm):
    class Routes:
        @hookimpl
        def register_routes(self, register):
            register("/-/routes/ping", "ping-view", methods=("GET",))

    class Clash:
        @hookimpl
        def register_routes(self, register):
            register("/-/routes/ping", "other-view")

    def by_rule(rule, view, methods=("GET",)):
        return rule, (view, methods)

    assert collect(make_pm(routes=Routes()), "register_routes", "route", by_rule).items == {
        "/-/routes/ping": ("ping-view", ("GET",))
    }
    with pytest.raises(PluginError, match="route '/-/routes/ping' is registered by both"):
        collect(make_pm(routes=Routes(), clash=Clash()), "register_routes", "route", by_rule)


def test_hook_register_slash_commands(make_pm):
    class Slash:
        @hookimpl
        def register_slash_commands(self, register):
            register("shrug", lambda agent, args: "¯\\_(ツ)_/¯", help="shrug at the agent")

    commands = collect(
        make_pm(slash=Slash()),
        "register_slash_commands",
        "slash command",
        lambda name, handler, help="": (name, (handler, help)),
    )
    handler, help_text = commands["shrug"]
    assert help_text == "shrug at the agent"
    assert handler("a", "") == "¯\\_(ツ)_/¯"
