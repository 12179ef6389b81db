"""The hive's MCP tools, as plugins register them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperhive_core.errors import PluginError
from hyperhive_core.plugins import HivePluginManager, Registry, collect

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

ROLES = frozenset({"agent", "manager"})


@dataclass(frozen=True)
class ToolContext:
    """Who is calling: known from the socket the call came in on, never from an argument."""

    hive: Hive
    agent: str
    role: str


@dataclass(frozen=True)
class Tool:
    """One MCP tool: ``mcp__hyperhive__<name>`` to Claude Code."""

    name: str
    fn: Callable[..., Any]
    roles: frozenset[str]

    def allowed_for(self, role: str) -> bool:
        return role in self.roles


def _tool(fn: Callable[..., Any], name: str | None = None, roles: Iterable[str] = ROLES) -> tuple[str, Tool]:
    roles = frozenset(roles)
    if not roles <= ROLES:
        unknown = sorted(roles - ROLES)
        raise PluginError(f"tool {name or fn.__name__!r} names unknown roles {unknown}; use {sorted(ROLES)}")
    tool = Tool(name or fn.__name__, fn, roles)
    return tool.name, tool


def collect_tools(pm: HivePluginManager) -> Registry:
    """Every tool from ``register_tools``, by name; a name two plugins use is an error."""
    return collect(pm, "register_tools", "tool", _tool)
