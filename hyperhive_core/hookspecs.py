"""The hyperhive plugin API: every hook a plugin may implement.

Hook families follow their verb: ``register_*`` collects things once at startup
(each call gets a ``register`` callback, so a clash names both plugins), ``on_*``
notifies, ``before_*`` intercepts. An implementation may be ``async def`` or return
an awaitable; core awaits it. Every hook here is documented in ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click
import pluggy

if TYPE_CHECKING:
    from sqlite_utils import Database

    from hyperhive_core.broker import Message
    from hyperhive_core.daemon import Hive

hookspec = pluggy.HookspecMarker("hyperhive")
hookimpl = pluggy.HookimplMarker("hyperhive")

Migration = Callable[["Database"], None]
Service = Callable[..., Any]


# -- lifecycle ---------------------------------------------------------------


@hookspec
def register_config_sections(register: Callable[[str, type], None]) -> None:
    """Declare the config sections a plugin reads.

    :param register: ``register(name, dataclass_type)``; the section ``[name]`` of
        ``hyperhive.toml`` is validated against the dataclass's typed fields, and
        ``hyperhive init`` writes it with its defaults. Field ``metadata["help"]``
        becomes the comment above the key.
    """


@hookspec
def register_migrations(register: Callable[[str, Iterable[Migration]], None]) -> None:
    """Declare a plugin's schema migrations.

    :param register: ``register(owner, [m001_..., m002_...])``. Each migration is a
        function taking a sqlite-utils ``Database``; it runs once, in order, inside a
        transaction, and is recorded per owner. Tables an owner creates must be
        named ``<owner>_...``.
    """


@hookspec
def hive_services(hive: Hive) -> Iterable[Service] | None:
    """Return long-running tasks to run for the life of the daemon.

    :param hive: the running hive.
    :return: async callables ``service(*, task_status)``. Each is started with
        ``nursery.start`` and supervised: a crash is logged and the service is
        restarted with backoff, never taking the daemon down.
    """


@hookspec
def on_startup(hive: Hive) -> None:
    """Called once the store is open and migrated, before any service starts.

    :param hive: the hive being started.
    """


@hookspec
def on_shutdown(hive: Hive) -> None:
    """Called once on shutdown, after every service has stopped.

    :param hive: the hive being stopped. Runs shielded from cancellation, so keep
        it short.
    """


# -- messages -------------------------------------------------------------------


@hookspec
def on_message(hive: Hive, message: Message) -> None:
    """Called after a message is stored durably, before its ``send`` returns.

    :param hive: the running hive.
    :param message: the stored ``hyperhive_core.broker.Message``, with its id.
        Runs in the sender's task, so keep it quick. An exception is logged and
        reported as an ``error`` event; the message stays sent.
    """


# -- tools ------------------------------------------------------------------


@hookspec
def register_tools(register: Callable[..., None]) -> None:
    """Add MCP tools that agents can call.

    :param register: ``register(fn, name=None, roles=("agent", "manager"))``. The
        tool is named ``fn.__name__`` unless ``name`` is given, and only agents
        whose role is in ``roles`` see it.
    """


# -- containers -----------------------------------------------------------------


@hookspec
def register_container_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add container backends, selected by ``[hive] container_backend``.

    :param register: ``register(name, factory)``; ``factory(hive)`` returns the
        backend.
    """


# -- web ----------------------------------------------------------------------


@hookspec
def register_routes(register: Callable[..., None]) -> None:
    """Add HTTP routes to the operator dashboard.

    :param register: ``register(rule, view, methods=("GET",))``. Plugin routes
        live under ``/-/<plugin>/`` unless the HTTP contract names them.
    """


@hookspec
def register_slash_commands(register: Callable[..., None]) -> None:
    """Add slash commands to the agent page's input line.

    :param register: ``register(name, handler, help="")``; the operator types
        ``/name args``.
    """


# -- cli ----------------------------------------------------------------------


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``hyperhive`` command line.

    :param cli: the top-level click group; add commands with ``@cli.command()``.
    """
