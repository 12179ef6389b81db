"""The hyperhive plugin API: every hook a plugin may implement.

Hook families follow their verb: ``register_*`` collects things once at startup
(each call gets a ``register`` callback, so a clash names both plugins), ``on_*``
notifies, ``before_*`` intercepts. An implementation may be ``async def`` or return
an awaitable; core awaits it. Every hook here is documented in ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pluggy

if TYPE_CHECKING:
    from sqlite_utils import Database

    from hyperhive_core.agents import AgentConfig
    from hyperhive_core.approvals import Approval
    from hyperhive_core.broker import Message
    from hyperhive_core.claude import SessionOptions
    from hyperhive_core.containers import ContainerEvent
    from hyperhive_core.harness import Turn
    from hyperhive_core.hive import Hive
    from hyperhive_core.panels import Panel

hookspec = pluggy.HookspecMarker("hyperhive")
hookimpl = pluggy.HookimplMarker("hyperhive")

Migration = Callable[["Database"], None]
Service = Callable[..., Any]
Spec = TypeVar("Spec", bound=Callable[..., Any])

# A renamed hook's old spec carries the new name here; the plugin manager calls its
# implementations as the new hook (hyperhive_core.plugins.HivePluginManager).
RENAMED_TO = "hyperhive_renamed_to"


def renamed(new_name: str, since: str) -> Callable[[Spec], Spec]:
    """Keep a renamed hook's old spec: pluggy warns each plugin that implements it, core calls it as the new one.

    The old spec stays, taking the arguments of the new, until the next major API
    version (docs/plugins.md#versions)::

        @renamed("on_turn_finished", since="1.1")
        def on_turn_end(hive, agent, turn): ...
    """

    def mark(spec: Spec) -> Spec:
        setattr(spec, RENAMED_TO, new_name)
        warning = DeprecationWarning(
            f"the hook {spec.__name__} is renamed {new_name} as of hyperhive plugin API {since}, and the old "
            f"name goes in API {next_major(since)}.0: rename the implementation"
        )
        return hookspec(warn_on_impl=warning)(spec)

    return mark


def removed(since: str, instead: str) -> Callable[[Spec], Spec]:
    """Keep a hook core no longer calls, so that pluggy warns each plugin that implements it.

    :param instead: what to do instead, a sentence for the plugin's author.
    """

    def mark(spec: Spec) -> Spec:
        warning = DeprecationWarning(
            f"the hook {spec.__name__} is deprecated as of hyperhive plugin API {since}, and hyperhive no longer "
            f"calls it; it goes in API {next_major(since)}.0. {instead}"
        )
        return hookspec(warn_on_impl=warning)(spec)

    return mark


def next_major(version: str) -> int:
    """The major API version after ``version``'s: the earliest a deprecated name may go."""
    return int(version.split(".", maxsplit=1)[0]) + 1


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


@hookspec
def message_headers(hive: Hive, sender: str, recipient: str, kind: str, body: str) -> Mapping[str, str] | None:
    """Called on every send, before the message is stored, to stamp headers on it.

    :param hive: the running hive.
    :param sender: who sends it, as core knows it (an agent from its own socket,
        ``operator`` or ``hive``); headers never change it.
    :param recipient: who it is for.
    :param kind: ``text`` or ``event``.
    :param body: the checked body (a hive event's is its JSON).
    :return: headers to add (lowercase names, short ASCII values), or ``None``.
        The results are merged; on a name two plugins give, the one called first
        wins, and headers the caller passed to ``send`` win over all. Runs in the
        sender's task and must not await (no ``async def``): keep it quick.
    """


@hookspec
def on_dead_letter(hive: Hive, message: Message) -> None:
    """Called after a message moved to dead-letter (leased ``max_attempts`` times without an ack).

    :param hive: the running hive.
    :param message: the dead ``hyperhive_core.broker.Message``: ``attempts`` and
        ``last_error`` say what happened. Runs in the task that gave the message
        back (a turn ending, a restart), so keep it quick. An exception is logged
        and reported as an ``error`` event.
    """


# -- agents ---------------------------------------------------------------------


@hookspec
def register_agent_sections(register: Callable[[str, type], None]) -> None:
    """Declare the sections a plugin reads in an agent's config.

    :param register: ``register(name, dataclass_type)``; ``[name]`` in an agent's
        ``agent.toml`` (or ``[agents.AGENT.name]`` in hyperhive.toml) is checked
        against the dataclass, and ``config.section(name)`` returns the instance.
        A section no plugin registered is an error, so a typo never goes unnoticed.
    """


@hookspec
def validate_agent_config(agent: str, config: AgentConfig) -> Iterable[str] | None:
    """Check an agent's config before it is applied.

    :param agent: the agent's name.
    :param config: the config, plugin sections already typed.
    :return: problems, as readable sentences; nothing when it is valid. A config
        with problems is never applied (nor approved).
    """


@hookspec
def on_cancel(hive: Hive, agent: str) -> None:
    """The operator asked to cancel what an agent is doing (``/cancel``, ``hyperhive cancel``).

    Core interrupts a running turn itself; a plugin that holds the agent's loop
    (a nap) should let go.

    :param hive: the running hive.
    :param agent: the agent's name.
    """


@hookspec
def on_agent_purged(hive: Hive, agent: str) -> None:
    """An agent was destroyed with its state purged (``hyperhive destroy NAME --purge``,
    the dashboard's purge): forget what the plugin keeps about it.

    Its container, state dir, config repos and core's records of it are gone by
    then; a plugin deletes its own (rows in its tables), so nothing shows the
    purged agent and a new agent of that name starts clean. May be async.

    :param hive: the running hive.
    :param agent: the purged agent's name.
    """


@hookspec
def before_recv(hive: Hive, agent: str) -> None:
    """Called before an agent's loop waits for its next messages; may hold it there.

    An implementation that awaits (a nap) parks the agent's loop until it returns.
    It must be safe to cancel: the loop is cancelled when the agent stops.

    :param hive: the running hive.
    :param agent: the agent's name.
    """


@hookspec
def on_turn_start(hive: Hive, agent: str, turn: Turn) -> None:
    """Called when an agent's turn begins, before the model sees its messages.

    :param hive: the running hive.
    :param agent: the agent's name.
    :param turn: the turn: ``messages``, ``prompt``, ``started_at``.
    """


@hookspec
def on_turn_end(hive: Hive, agent: str, turn: Turn) -> None:
    """Called when an agent's turn has ended and its messages are acked or released.

    :param hive: the running hive.
    :param agent: the agent's name.
    :param turn: the turn, now with ``exit`` (``ok``, ``compact-retry``,
        ``interrupted`` or ``failure``), ``duration_ms``, ``cost_usd`` and the
        CLI's ``result`` (tool calls, usage, permission denials).
    """


@hookspec
def configure_session(hive: Hive, agent: str, options: SessionOptions) -> None:
    """Adjust how an agent's Claude Code process starts, before each (re)start.

    :param hive: the running hive.
    :param agent: the agent's name.
    :param options: change it in place: ``allowed_tools``, ``settings`` (Claude Code
        settings such as hooks), ``env``, ``system_prompt`` (text fragments),
        ``extra_args``, ``model``.
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


@hookspec
def register_broker_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add message broker backends, selected by ``[broker] backend``.

    :param register: ``register(name, factory)``; ``factory(hive, *, policy,
        on_commit, on_dead)`` returns a ``hyperhive_core.broker.MessageBroker``
        that passes the broker conformance suite, handing those three to its
        constructor. Core registers ``sqlite`` and ``jetstream``.
    """


@hookspec
def on_container_event(hive: Hive, event: ContainerEvent) -> None:
    """Called when an agent's container starts, stops or crashes.

    :param hive: the running hive.
    :param event: a ``hyperhive_core.containers.ContainerEvent``: ``agent``,
        ``kind`` (``started``, ``stopped`` or ``crashed``), ``detail`` in words and
        ``log_tail``. Only the daemon restarts a crashed container; hooks react
        (report it, mark the agent). Events come from the backend's own watcher,
        so keep the hook quick and hand slow work to a service.
    """


# -- approvals ----------------------------------------------------------------


@hookspec
def on_approval_resolved(hive: Hive, approval: Approval) -> None:
    """Called after the operator's answer to a manager's request is recorded and sent.

    :param hive: the running hive.
    :param approval: the ``hyperhive_core.approvals.Approval`` as resolved: ``status``
        (``approved``, ``denied``, ``failed`` or ``cancelled``), ``note``, ``error``,
        ``kind``, ``agent``, ``fetched_sha``. By then an approved change has been
        carried out and the manager has its ``approval_resolved`` event. An
        exception is logged and reported as an ``error`` event.
    """


# -- web ----------------------------------------------------------------------


@hookspec
def register_routes(register: Callable[..., None]) -> None:
    """Add HTTP routes to the operator dashboard.

    :param register: ``register(rule, view, methods=("GET",), public=False)``.
        Plugin routes live under ``/-/<plugin>/``; with ``public=True``, at a path
        of their own outside ``/-/`` that none of the dashboard's own routes
        answers (checked at startup). The dashboard calls
        ``view(hive, **rule_variables)``, sync or async.
    """


@hookspec
def dashboard_panels(hive: Hive) -> Iterable[Panel] | None:
    """Contribute sections to the host dashboard ``/``.

    :param hive: the running hive.
    :return: ``hyperhive_core.panels.Panel`` objects, rendered on every page load;
        their scripts keep them live.
    """


@hookspec
def agent_panels(hive: Hive, agent: str) -> Iterable[Panel] | None:
    """Contribute sections to an agent's page ``/agent/<name>/``.

    :param hive: the running hive.
    :param agent: the agent whose page it is.
    :return: ``hyperhive_core.panels.Panel`` objects.
    """


@hookspec
def register_slash_commands(register: Callable[..., None]) -> None:
    """Add slash commands to the agent page's input line.

    :param register: ``register(name, handler, help="")``; the operator types
        ``/name args`` and sees what ``handler(hive, agent, args)`` returns (text).
    """


# -- cli ----------------------------------------------------------------------


@hookspec
def register_host_commands(register: Callable[..., None]) -> None:
    """Add commands to the host control socket (what the ``hyperhive`` CLI calls).

    :param register: ``register(name, handler)``; ``handler(hive, **arguments)``,
        sync or async, returns a JSON-serialisable result or raises
        ``HyperhiveError`` with a message for the operator.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``hyperhive`` command line.

    :param cli: the top-level click group; add commands with ``@cli.command()``.
    """
