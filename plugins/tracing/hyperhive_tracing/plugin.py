"""The capture's hook implementations: the plugin's module registers them with the view's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hyperhive_core import hookimpl
from hyperhive_tracing.capture import TRACER, Tracer
from hyperhive_tracing.config import TracingSection
from hyperhive_tracing.store import MIGRATIONS

if TYPE_CHECKING:
    from hyperhive_core import Hive, Message, Turn


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("tracing", TracingSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("tracing", MIGRATIONS)


@hookimpl
async def on_startup(hive: Hive) -> None:
    tracer = Tracer(hive, hive.config.section("tracing"))
    await tracer.resume()
    hive.stash[TRACER] = tracer


@hookimpl
def hive_services(hive: Hive) -> list[Callable[..., Any]]:
    tracer = hive.stash[TRACER]
    services = [tracer.write, tracer.watch, tracer.run_retention]
    return services if tracer.export is None else [*services, tracer.export.run]


@hookimpl
def message_headers(hive: Hive, sender: str, recipient: str, kind: str, body: str) -> Mapping[str, str] | None:
    tracer = hive.stash.get(TRACER)  # a send as the daemon starts, before on_startup: not traced
    return tracer.headers_for(sender, recipient, kind, body) if tracer is not None else None


@hookimpl
def on_message(hive: Hive, message: Message) -> None:
    tracer = hive.stash.get(TRACER)
    if tracer is not None:
        tracer.message_stored(message)


@hookimpl
def on_turn_start(hive: Hive, agent: str, turn: Turn) -> None:
    hive.stash[TRACER].turn_started(agent, turn)


@hookimpl
def on_turn_end(hive: Hive, agent: str, turn: Turn) -> None:
    hive.stash[TRACER].turn_ended(agent, turn)
