"""hyperhive-tracing: one trace per piece of work across the swarm.

A message from outside (the operator's, or any other not sent by an agent's turn)
starts a trace; the turn it wakes, that turn's tool calls and sends, the turns the
sends wake, questions to the operator and approvals, naps and compactions are its
spans. Spans are kept in the table ``tracing_spans`` (``hyperhive_tracing.store``)
and exported over OTLP when ``[tracing] otlp_endpoint`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hyperhive_core import hookimpl
from hyperhive_tracing.config import TracingSection
from hyperhive_tracing.store import MIGRATIONS

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

__all__ = ["TracingSection"]


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("tracing", TracingSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("tracing", MIGRATIONS)
