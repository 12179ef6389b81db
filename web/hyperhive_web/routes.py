"""Routes that plugins add through ``register_routes``, checked and mounted on the app.

One rule for every plugin: its routes live under ``/-/<plugin>/``. A route registered
with ``public=True`` has a path of its own instead (one that other tools know, such
as ``/metrics``): outside ``/-/``, and never a path the dashboard's own routes answer,
so no plugin can shadow them. Two plugins registering the same route stop the daemon
at startup, naming both. Every plugin route is behind the same login as the rest.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any

import pluggy
from quart import Quart
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import MapAdapter, RequestRedirect

from hyperhive_core import PluginError, collect

if TYPE_CHECKING:
    from hyperhive_web.dashboard import Dashboard

PRIVATE_PREFIX = "/-/"
ENDPOINT_PREFIX = "plugin "

# A URL a rule's variables could take, to ask the app which route answers it.
VARIABLE = re.compile(r"<(?:(\w+)(?:\((.*?)\))?:)?\w+>")
SAMPLES = {"int": "1", "float": "1.0", "uuid": str(uuid.UUID(int=0))}


@dataclass(frozen=True)
class PluginRoute:
    plugin: str
    rule: str
    view: Callable[..., Any]
    methods: tuple[str, ...]
    public: bool = False

    @property
    def endpoint(self) -> str:
        return f"{ENDPOINT_PREFIX}{self.plugin} {' '.join(self.methods)} {self.rule}"


PluginRoutes = list[PluginRoute]


def collect_routes(pm: pluggy.PluginManager) -> PluginRoutes:
    """Every plugin route; a rule outside its plugin's place, or claimed twice, is an error."""

    def adapt(
        rule: str, view: Callable[..., Any], methods: tuple[str, ...] | list[str] = ("GET",), *, public: bool = False
    ) -> tuple[str, Any]:
        if not isinstance(public, bool):
            raise PluginError(f"route {rule!r}: public must be True or False, not {public!r}")
        methods = tuple(sorted(method.upper() for method in methods))
        return f"{' '.join(methods)} {rule}", (rule, view, methods, public)

    registry = collect(pm, "register_routes", "route", adapt)
    routes = [PluginRoute(registry.owners[key], *registry[key]) for key in registry]
    for route in routes:
        check_place(route)
    return routes


def check_place(route: PluginRoute) -> None:
    own = f"{PRIVATE_PREFIX}{route.plugin}/"
    if not route.public and not route.rule.startswith(own):
        raise PluginError(
            f"plugin {route.plugin!r} registers the route {route.rule!r}; plugin routes live under {own}, "
            "or, for a path of its own, register it with public=True"
        )
    if route.public and (route.rule.startswith(PRIVATE_PREFIX) or not route.rule.startswith("/")):
        raise PluginError(
            f"plugin {route.plugin!r} registers the public route {route.rule!r}; a public route is a path "
            f"of its own starting with '/', outside {PRIVATE_PREFIX} (drop public=True to put it under {own})"
        )


def sample_path(rule: str) -> str:
    """A path ``rule`` matches: each variable filled with a value its converter takes."""

    def sample(variable: re.Match[str]) -> str:
        converter, arguments = variable.group(1), variable.group(2)
        if converter == "any" and arguments:
            return arguments.split(",")[0].strip().strip("'\"")
        return SAMPLES.get(converter or "", "x")

    return VARIABLE.sub(sample, rule)


def own_route_at(own: MapAdapter, path: str) -> str | None:
    """The dashboard's own rule that answers ``path`` (for any method), if one does."""
    method = None
    for _ in range(2):
        try:
            rule, _ = own.match(path, method=method, return_rule=True)
        except MethodNotAllowed as other:  # there is a route, for other methods: ask with one of them
            method = next(iter(other.valid_methods or ()), "POST")
        except (NotFound, RequestRedirect):
            return None
        else:
            return rule.rule
    return path


def mount_routes(app: Quart, dashboard: Dashboard, routes: PluginRoutes) -> None:
    """Add the plugin routes to ``app``, which has all of the dashboard's own already.

    :raises PluginError: a public route would answer a path one of the dashboard's own routes does.
    """
    own = app.url_map.bind("localhost")
    for route in routes:
        clash = own_route_at(own, sample_path(route.rule)) if route.public else None
        if clash is not None:
            raise PluginError(
                f"plugin {route.plugin!r} registers the public route {route.rule!r}, which would shadow "
                f"the dashboard's own route {clash!r}; give it another path, or drop public=True to put it "
                f"under {PRIVATE_PREFIX}{route.plugin}/"
            )
        app.add_url_rule(
            route.rule, endpoint=route.endpoint, view_func=plugin_view(dashboard, route), methods=list(route.methods)
        )


def plugin_view(dashboard: Dashboard, route: PluginRoute) -> Callable[..., Any]:
    """Call a plugin's view with the hive first, then the rule's variables."""

    @wraps(route.view)
    async def view(**variables: Any) -> Any:
        result = route.view(dashboard.hive, **variables)
        return await result if inspect.isawaitable(result) else result

    return view
