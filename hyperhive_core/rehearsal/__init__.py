"""The rehearsal model: a local stand-in for the Anthropic API, driven by a scenario file.

Claude Code runs for real against it, so tests and the offline demo exercise the
whole hive with only the model replaced. See ``docs/rehearsal.md``.

Names load lazily: the ``hyperhive`` command imports this package to list
``rehearse`` and must stay quick to start.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperhive_core.rehearsal.director import Decision, Director
    from hyperhive_core.rehearsal.scenario import (
        Scenario,
        ScenarioError,
        load_demo_scenario,
        load_scenario,
        parse_scenario,
    )
    from hyperhive_core.rehearsal.server import (
        RecordedRequest,
        RehearsalError,
        RehearsalServer,
        base_url_for,
        env_for,
    )

_EXPORTS = {
    "Decision": "director",
    "Director": "director",
    "Scenario": "scenario",
    "ScenarioError": "scenario",
    "load_demo_scenario": "scenario",
    "load_scenario": "scenario",
    "parse_scenario": "scenario",
    "RecordedRequest": "server",
    "RehearsalError": "server",
    "RehearsalServer": "server",
    "base_url_for": "server",
    "env_for": "server",
}
__all__ = [
    "Decision",
    "Director",
    "RecordedRequest",
    "RehearsalError",
    "RehearsalServer",
    "Scenario",
    "ScenarioError",
    "base_url_for",
    "env_for",
    "load_demo_scenario",
    "load_scenario",
    "parse_scenario",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
