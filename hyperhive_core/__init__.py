"""hyperhive: a swarm of Claude Code agents on one host, steered by an operator.

This package's top level is the plugin API: everything a plugin (bundled or not)
and the dashboard import from core, and nothing else, comes from here
(docs/plugins.md). Names load lazily so that ``hyperhive relay``, which every agent
starts, imports nothing heavy. ``API_VERSION`` follows semantic versioning: a
plugin declares the range it works with, and a removed or renamed hook warns for
one minor version before it goes.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

API_VERSION = "1.0"
"""The plugin API's version; plugins declare a compatible range (docs/plugins.md#versions)."""

# name -> module it lives in. The plugin API, and the only names a plugin imports from core.
_EXPORTS = {
    # hooks and plugin state
    "hookimpl": "hyperhive_core.hookspecs",
    "Service": "hyperhive_core.hookspecs",
    "StashKey": "hyperhive_core.stash",
    "Stash": "hyperhive_core.stash",
    # the hive and what hooks receive
    "Hive": "hyperhive_core.hive",
    "AgentConfig": "hyperhive_core.agents",
    "State": "hyperhive_core.agents",
    "UnknownAgent": "hyperhive_core.agents",
    "Message": "hyperhive_core.broker",
    "NotDeadLetter": "hyperhive_core.broker",
    "Turn": "hyperhive_core.harness",
    "TurnResult": "hyperhive_core.claude",
    "TurnExit": "hyperhive_core.claude",
    "SessionOptions": "hyperhive_core.claude",
    "ToolContext": "hyperhive_core.tools",
    "ContainerEvent": "hyperhive_core.containers",
    "ContainerEventKind": "hyperhive_core.containers",
    "ContainerProcess": "hyperhive_core.containers",
    "Event": "hyperhive_core.events",
    "SubscriptionDropped": "hyperhive_core.events",
    "Panel": "hyperhive_core.panels",
    "OPERATOR": "hyperhive_core.names",
    "SYSTEM": "hyperhive_core.names",
    "AGENT_NAME_PATTERN": "hyperhive_core.names",
    "AGENT_NAME_RULE": "hyperhive_core.names",
    # config and errors
    "option": "hyperhive_core.config",
    "HyperhiveError": "hyperhive_core.errors",
    "ConfigError": "hyperhive_core.errors",
    "PluginError": "hyperhive_core.errors",
    "check_model": "hyperhive_core.models",
    "known_models": "hyperhive_core.models",
    # CLI commands that reach the daemon
    "CliState": "hyperhive_core.cli",
    "pass_state": "hyperhive_core.cli",
    "ask_daemon": "hyperhive_core.cli",
    "echo_json": "hyperhive_core.cliopts",
    "json_option": "hyperhive_core.cliopts",
    # the dashboard's: acting for the operator, and the hooks it serves
    "operator_actions": "hyperhive_core.host_commands",
    "on_manager_host": "hyperhive_core.host_commands",
    "state_paths": "hyperhive_core.daemon",
    "collect": "hyperhive_core.plugins",
    "callers_by_plugin": "hyperhive_core.plugins",
    "await_all": "hyperhive_core.plugins",
    "root_cause": "hyperhive_core.supervise",
}

# Literal, for type checkers; test_meta checks it lists every export.
__all__ = [
    "AGENT_NAME_PATTERN",
    "AGENT_NAME_RULE",
    "API_VERSION",
    "OPERATOR",
    "SYSTEM",
    "AgentConfig",
    "CliState",
    "ConfigError",
    "ContainerEvent",
    "ContainerEventKind",
    "ContainerProcess",
    "Event",
    "Hive",
    "HyperhiveError",
    "Message",
    "NotDeadLetter",
    "Panel",
    "PluginError",
    "Service",
    "SessionOptions",
    "Stash",
    "StashKey",
    "State",
    "SubscriptionDropped",
    "ToolContext",
    "Turn",
    "TurnExit",
    "TurnResult",
    "UnknownAgent",
    "__version__",
    "ask_daemon",
    "await_all",
    "callers_by_plugin",
    "check_model",
    "collect",
    "echo_json",
    "hookimpl",
    "iso_utc",
    "json_option",
    "known_models",
    "on_manager_host",
    "operator_actions",
    "option",
    "pass_state",
    "root_cause",
    "state_paths",
]

if TYPE_CHECKING:
    from hyperhive_core.agents import AgentConfig, State, UnknownAgent
    from hyperhive_core.broker import Message, NotDeadLetter
    from hyperhive_core.claude import SessionOptions, TurnExit, TurnResult
    from hyperhive_core.cli import CliState, ask_daemon, pass_state
    from hyperhive_core.cliopts import echo_json, json_option
    from hyperhive_core.config import option
    from hyperhive_core.containers import ContainerEvent, ContainerEventKind, ContainerProcess
    from hyperhive_core.daemon import state_paths
    from hyperhive_core.errors import ConfigError, HyperhiveError, PluginError
    from hyperhive_core.events import Event, SubscriptionDropped
    from hyperhive_core.harness import Turn
    from hyperhive_core.hive import Hive
    from hyperhive_core.hookspecs import Service, hookimpl
    from hyperhive_core.host_commands import on_manager_host, operator_actions
    from hyperhive_core.models import check_model, known_models
    from hyperhive_core.names import AGENT_NAME_PATTERN, AGENT_NAME_RULE, OPERATOR, SYSTEM
    from hyperhive_core.panels import Panel
    from hyperhive_core.plugins import await_all, callers_by_plugin, collect
    from hyperhive_core.stash import Stash, StashKey
    from hyperhive_core.supervise import root_cause
    from hyperhive_core.tools import ToolContext


def iso_utc(timestamp: float) -> str:
    """A wall-clock time as ISO 8601 in UTC, to the second: ``2026-11-22T12:30:05Z``.

    How events, state details and pages show a moment; JavaScript's ``Date.parse`` reads it as is.
    """
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("hyperhive")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'hyperhive_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
