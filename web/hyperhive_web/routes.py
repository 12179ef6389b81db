"""Routes that plugins add through ``register_routes``, checked and mounted on the app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from hyperhive_core.errors import PluginError
from hyperhive_core.plugins import collect

# Plugin routes the HTTP contract names (docs/architecture.md §9); every other plugin route
# lives under /-/<plugin>/.
CONTRACT_RULES = frozenset({"/api/answer-question", "/api/stats", "/metrics"})


@dataclass(frozen=True)
class PluginRoute:
    plugin: str
    rule: str
    view: Callable[..., Any]
    methods: tuple[str, ...]


PluginRoutes = list[PluginRoute]


def collect_routes(pm: pluggy.PluginManager) -> PluginRoutes:
    """Every plugin route; a rule outside the plugin's prefix, or claimed twice, is an error."""

    def adapt(rule: str, view: Callable[..., Any], methods: tuple[str, ...] | list[str] = ("GET",)) -> tuple[str, Any]:
        methods = tuple(sorted(method.upper() for method in methods))
        return f"{' '.join(methods)} {rule}", (rule, view, methods)

    registry = collect(pm, "register_routes", "route", adapt)
    routes = []
    for key in registry:
        plugin = registry.owners[key]
        rule, view, methods = registry[key]
        if not (rule.startswith(f"/-/{plugin}/") or rule in CONTRACT_RULES):
            raise PluginError(
                f"plugin {plugin!r} registers the route {rule!r}; plugin routes live under /-/{plugin}/ "
                f"(or are one of the contract's: {', '.join(sorted(CONTRACT_RULES))})"
            )
        routes.append(PluginRoute(plugin, rule, view, methods))
    return routes
