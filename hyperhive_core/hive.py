"""The running hive: what the daemon hands to plugins and what operator commands act on."""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core.agentenv import AGENT_HOME, agent_env
from hyperhive_core.agents import (
    AGENT,
    MANAGER,
    AgentConfig,
    Agents,
    State,
    UnknownAgent,
    check_agent_config,
    config_from_json,
)
from hyperhive_core.approvals import Approvals
from hyperhive_core.broker import Message, MessageBroker, RecipientDirectory
from hyperhive_core.brokers import make_broker
from hyperhive_core.claude import ClaudeSection, find_cli
from hyperhive_core.cluster import make_cluster
from hyperhive_core.config import Config, option
from hyperhive_core.configrepo import ORIGIN_APPLIED, ConfigRepos
from hyperhive_core.containers import (
    ContainerBackend,
    ContainerEvent,
    ContainerEventKind,
    ContainerSpec,
    Limits,
    collect_backends,
)
from hyperhive_core.containers.cgroups import ContainersSection, resolve_limits
from hyperhive_core.errors import ConfigError, HyperhiveError, PluginError
from hyperhive_core.events import EventBus, EventsSection
from hyperhive_core.mcp_surface import AgentSockets
from hyperhive_core.modelproxy import SOCKET_NAME, make_model_proxy, sandbox_env
from hyperhive_core.models import check_model
from hyperhive_core.names import SYSTEM, check_agent_name
from hyperhive_core.paths import StatePaths
from hyperhive_core.plugins import HivePluginManager, await_all, callers_by_plugin
from hyperhive_core.stash import Stash
from hyperhive_core.store import Store
from hyperhive_core.tools import collect_tools

if TYPE_CHECKING:
    import sqlite_utils

    from hyperhive_core.cluster.hosts import Cluster
    from hyperhive_core.harness import Harness
    from hyperhive_core.rehearsal import RehearsalServer

log = logging.getLogger(__name__)

# What the daemon sets on a built hive, as it serves.
_REBOUND = frozenset({"rehearsal", "agent_nursery", "_claude_cli", "_dead_held"})


@dataclass
class HiveSection:
    """The hive as a whole."""

    state_dir: Path | None = option(
        None,
        help="Where the database, agent state and sockets live.\n"
        "Default: /var/lib/hyperhive as root, else ~/.local/share/hyperhive.",
    )
    plugins: list[str] | None = option(
        None,
        help="Plugins to load, by entry-point name. Default: every installed plugin.\n"
        "The HYPERHIVE_LOAD_PLUGINS environment variable overrides this.",
    )
    manager: str = option("manager", help="The manager agent's name; the hive always has one.")
    container_backend: str = option(
        "bwrap", help="Where agents run: bwrap (default), nspawn, or process (no isolation)."
    )
    admin_group: str = option("", help="Group allowed to use the host socket (mode 0660). Empty: the daemon's own.")


class Hive:
    """Config, plugins, store, broker, events, agents, tools, containers: one per daemon."""

    def __init__(self, config: Config, pm: HivePluginManager, store: Store, paths: StatePaths) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.paths = paths
        self.settings: HiveSection = config.section("hive", HiveSection)
        self.claude: ClaudeSection = config.section("claude", ClaudeSection)
        self.events = EventBus(store, config.section("events", EventsSection))
        directory = RecipientDirectory()
        self.broker: MessageBroker = make_broker(
            self, policy=directory, on_commit=self._message_committed, on_dead=self._messages_dead
        )
        self.broker.stamp_headers = self._message_headers
        self.agents = Agents(store, self.events, directory, self.settings.manager)
        self.surface = AgentSockets(self, collect_tools(pm))
        self.model_proxy = make_model_proxy(self)
        self.repos = ConfigRepos(paths)
        self.approvals = Approvals(self)
        self.backend = make_backend(self)
        self.harnesses: dict[str, Harness] = {}
        self.start_slots = trio.CapacityLimiter(self.claude.start_slots)
        """Claude Code processes that may be starting at once (``[claude] max_concurrent_starts``)."""
        self._runs: dict[str, _AgentRun] = {}
        self.rehearsal: RehearsalServer | None = None
        self.agent_nursery: trio.Nursery | None = None
        """Where agents' turn loops run; set by the daemon once it serves."""
        self._claude_cli: Path | None = None
        # Dead letters found while the hive starts (the restart's requeue), reported once it is up.
        self._dead_held: list[Message] | None = []
        self.stash = Stash()
        """Plugins' own objects, each under a ``StashKey`` its plugin holds (docs/plugins.md#state)."""
        self.cluster: Cluster | None = make_cluster(self)
        """This host's place in a hive that spans hosts (``[cluster] host``); None on a hive of one host."""
        if self.cluster is not None:
            self.events.forward = self.cluster.offer_event
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        # Core's parts are fixed once built, and plugins keep their objects in the stash,
        # so no plugin replaces ``broker`` or ``events``, or another plugin's object.
        if getattr(self, "_sealed", False) and name not in _REBOUND:
            raise AttributeError(
                f"hive.{name} cannot be set: core's parts are fixed once the hive is built; "
                "a plugin keeps its own objects in hive.stash under a StashKey (docs/plugins.md#state)"
            )
        super().__setattr__(name, value)

    @property
    def claude_cli(self) -> Path:
        if self._claude_cli is None:
            self._claude_cli = find_cli(self.claude.cli)
        return self._claude_cli

    # -- per-agent facts ---------------------------------------------------------

    def container_spec(self, name: str) -> ContainerSpec:
        return self.container_spec_for(name, self.agents.get(name).role)

    def container_spec_for(self, name: str, role: str) -> ContainerSpec:
        # The manager writes every agent's proposed config repo, each at /agents/<name>/config.
        binds = {
            f"/agents/{other}/config": self.repos.proposed(other)
            for other in (self.repos.proposed_names() if role == MANAGER else ())
            if other != name
        }
        return ContainerSpec(
            agent=name,
            role=role,
            state_dir=self.paths.agent_state(name),
            socket_dir=self.paths.agent_run(name),
            extra_binds=binds,
            limits=self.agent_limits(name) if name in self.agents else None,
        )

    def listed_spec(self, name: str) -> ContainerSpec:
        """``name``'s container spec as a listing of every agent hands it to ``backend.limits``: made
        once per agent (a new config is a new agent), and again after ``container_changed``."""
        agent = self.agents.get(name)
        if agent.listed_spec is None:
            agent.listed_spec = self.container_spec(name)
        return agent.listed_spec

    def agent_limits(self, name: str) -> Limits:
        """``name``'s resource caps: its own config's where it sets them, else ``[containers]``'s."""
        section = self.config.section("containers", ContainersSection)
        return resolve_limits(section, **self.agents.get(name).config.limit_overrides())

    @asynccontextmanager
    async def container_in_use(self, name: str) -> AsyncIterator[None]:
        """Keep ``name``'s container up while the caller runs something in it (``backend.exec``):
        an asleep agent's container starts, and it does not go to sleep meanwhile."""
        harness = self.harnesses.get(name)
        if harness is None or harness.session is None:
            yield
            return
        async with harness.container_in_use():
            yield

    def container_changed(self, name: str) -> None:
        """``name``'s container spec changed (a config repo appeared for the manager to see):
        its container restarts with the new one before its next turn."""
        if name in self.agents:
            self.agents.get(name).listed_spec = None
        harness = self.harnesses.get(name)
        if harness is not None:
            harness.container_changed()

    def session_env(self, name: str, state: Path) -> dict[str, str]:
        """The Claude Code process's environment: the model endpoint, and no phoning home.

        :param state: the agent's state dir as it sees it. ``HOME`` is elsewhere, where the
            agent cannot write (see ``agentenv``); without a container, a directory that
            is not there, beside its state dir.
        """
        home = AGENT_HOME if self.backend.isolated else self.paths.agent_state(name).parent / "home"
        env = {
            **agent_env(state, home),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # List the hive's tools up front instead of behind the CLI's tool search.
            "ENABLE_TOOL_SEARCH": "false",
            "CLAUDE_CODE_MAX_RETRIES": str(self.claude.api_retries),
        }
        if self.backend.private_network:
            # Only through the daemon's proxy, which adds the credential: none is ever inside.
            return env | sandbox_env()
        # A TLS-intercepting proxy's CA, when the host needs one to reach the API.
        if os.environ.get("NODE_EXTRA_CA_CERTS"):
            env["NODE_EXTRA_CA_CERTS"] = os.environ["NODE_EXTRA_CA_CERTS"]
        if self.rehearsal is not None:
            env |= self.rehearsal.env_for(name)
        else:
            for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
                if os.environ.get(key):
                    env[key] = os.environ[key]
            if self.claude.base_url:
                env["ANTHROPIC_BASE_URL"] = self.claude.base_url
        return env

    # -- operator controls ---------------------------------------------------------

    async def add_agent(self, name: str, config: AgentConfig, origin: str = "spawn") -> None:
        """Register an agent, open its socket, and start its supervised turn loop.

        ``config`` has been through ``check_agent_config``.
        """
        from hyperhive_core.harness import Harness

        if self.cluster is not None:
            await self.cluster.claim(name)  # refused if another host runs an agent of that name
        agent = await self.agents.add(name, config, self.claude.model, origin, self.claude.extra_models)
        self.paths.agent_state(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        spec = self.container_spec(name)
        await self.backend.create(spec)
        await self.surface.open(name, agent.role, spec.socket_dir / "agent.sock")
        if self.backend.private_network:
            await self.model_proxy.open(name, spec.socket_dir / SOCKET_NAME)
        harness = self.harnesses[name] = Harness(self, name)
        assert self.agent_nursery is not None, "agents start once the daemon serves"
        run = self._runs[name] = _AgentRun()
        await self.agent_nursery.start(run.supervise, self, harness)

    async def _stop_agent(self, name: str) -> None:
        """Stop the agent's loop and container, close its socket, and forget it as live."""
        run = self._runs.pop(name, None)
        if run is not None:
            run.scope.cancel()
            await run.finished.wait()
        self.harnesses.pop(name, None)
        await self.surface.close(name)
        await self.model_proxy.close(name)
        await self.backend.stop(self.container_spec(name))
        self.agents.remove(name)

    # -- lifecycle: spawn, destroy (keeping state), restore, rebuild ---------------------

    async def spawn(self, name: str, config: AgentConfig | None = None) -> dict[str, Any]:
        """Create and start a new agent: the operator's direct spawn, or an approved ``request_spawn``.

        Its config repos are seeded from the template with ``config`` (default: the
        defaults), and it runs from the applied one.
        """
        await self.approvals.check_free(check_agent_name(name))
        config = check_agent_config(
            self.pm, name, config or AgentConfig(), f"the config of {name!r}", extra_models=self.claude.extra_models
        )
        sha = await self.repos.create(name, config, self.approvals.agent_sections())
        try:
            await self.add_applied(name, config, sha)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.repos.remove(name)
            raise
        self.container_changed(self.agents.manager)  # the manager gets the new repo
        return self.agents.get(name).snapshot()

    async def add_applied(self, name: str, config: AgentConfig, sha: str) -> None:
        """Start a new agent whose config is its applied repo at ``sha`` (checked out already).

        If it cannot start, nothing of it stays registered.
        """
        try:
            await self.add_agent(name, config, ORIGIN_APPLIED)
            await self.agents.remember(name, applied_sha=sha)
        except BaseException:
            with trio.CancelScope(shield=True):
                if name in self.agents:
                    await self._stop_agent(name)
                await self.store.write(lambda db: db.table("agents").delete_where("name = ?", [name]))
            raise
        self.events.publish(name, "note", text=f"spawned from config {sha[:12]}")

    async def apply_config(self, name: str, config: AgentConfig, sha: str) -> None:
        """Move ``name``'s applied repo to ``sha`` and rebuild it with ``config``, or put it back as it was.

        A model the config changes replaces the operator's model override: the
        operator approved the new one.
        """
        old_config, old = self.agents.get(name).config, (await self.agents.stored())[name]
        await self.repos.checkout(name, sha)
        await self.agents.remember(name, applied_sha=sha)
        if config.model != old_config.model:
            await self.agents.remember(name, model_override=None)
        try:
            await self.rebuild(name, config)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.repos.checkout(name, old["applied_sha"])
                await self.agents.remember(name, applied_sha=old["applied_sha"], model_override=old["model_override"])
                if name in self.agents:
                    await self._stop_agent(name)
                await self.add_agent(name, old_config, ORIGIN_APPLIED)
            raise
        self.events.publish(name, "note", text=f"config {sha[:12]} applied")

    async def destroy(self, name: str, purge: bool = False) -> dict[str, Any]:
        """Stop and remove an agent. Its state is kept (and restorable) unless ``purge``.

        Purging also wipes ``agents/<name>/`` and ``applied/<name>/``, after checking
        both resolve inside the state root.
        """
        check_agent_name(name)
        if name == self.agents.manager:
            raise HyperhiveError(f"{name!r} is the manager; the hive always has one, so it cannot be destroyed")
        live = name in self.agents
        if not live and name not in await self.kept_state():
            if await self.approvals.is_draft(name):
                if not purge:
                    raise HyperhiveError(f"{name!r} is a draft, with nothing running; discard it with --purge")
            elif not await self._spawn_leftovers(name):
                raise UnknownAgent(f"no agent or kept state named {name!r}")
            elif not purge:
                raise HyperhiveError(
                    f"{name!r} is what a spawn cut short left behind (its repos, no agent); discard it with --purge"
                )
        doomed = [self.paths.inside(path) for path in (self.paths.agent_dir(name), self.paths.applied(name))]
        if live:
            await self._stop_agent(name)
        await self.backend.destroy(self.container_spec_for(name, AGENT), purge)
        if purge:
            for path in doomed:
                if path.exists():
                    await trio.to_thread.run_sync(shutil.rmtree, path)
            await self.store.write(partial(_forget_agent, name))
            if self.cluster is not None:
                await self.cluster.release(name)
        else:
            await self.agents.remember(name, destroyed_at=time.time())
        await self.approvals.agent_gone(name, purged=purge)
        if purge:
            await self._agent_purged(name)
        self.events.publish(name, "note", text="destroyed; state purged" if purge else "destroyed; state kept")
        return {"agent": name, "purged": purge}

    async def _spawn_leftovers(self, name: str) -> bool:
        """Whether ``name`` has repos or state but no agent record: a spawn the daemon died in the middle of."""
        on_disk = any(path.exists() for path in (self.paths.agent_dir(name), self.paths.applied(name)))
        return on_disk and name not in await self.agents.stored()

    async def _agent_purged(self, name: str) -> None:
        """Let each plugin's ``on_agent_purged`` forget ``name``; one that fails is reported, and
        neither stops the others forgetting it nor undoes the purge."""
        for plugin, caller in reversed(list(callers_by_plugin(self.pm, "on_agent_purged"))):
            try:
                await await_all(caller(hive=self, agent=name))
            except Exception as exc:
                log.exception("plugin %s: on_agent_purged failed for %s", plugin, name)
                self.events.publish(
                    SYSTEM, "error", where="on_agent_purged", plugin=plugin, agent=name, error=repr(exc)
                )

    async def restore(self, name: str) -> dict[str, Any]:
        """Bring back a destroyed agent from its kept state, with the config it had."""
        row = (await self.kept_state()).get(name)
        if row is None:
            raise HyperhiveError(f"no kept state named {name!r}; `hyperhive kept` lists what can be restored")
        config = check_agent_config(
            self.pm, name, *await self.stored_config(name, row), extra_models=self.claude.extra_models
        )
        await self.add_agent(name, config, row["origin"])
        self.events.publish(name, "note", text="restored from kept state")
        return self.agents.get(name).snapshot()

    async def rebuild(self, name: str, config: AgentConfig | None = None) -> dict[str, Any]:
        """Restart an agent from scratch with its current config (or ``config``); clears ``failed``."""
        agent = self.agents.get(name)
        config, origin = config or agent.config, (await self.agents.stored())[name]["origin"]
        await self._stop_agent(name)
        await self.add_agent(name, config, origin)
        self.events.publish(name, "note", text="rebuilt")
        return self.agents.get(name).snapshot()

    async def stored_config(self, name: str, row: dict[str, Any]) -> tuple[AgentConfig, str]:
        """An agent's config as last applied, unchecked, and where it came from.

        An agent with config repos runs its applied repo's ``agent.toml`` at the
        recorded sha; the others, the config stored with them.
        """
        sha = row["applied_sha"]
        if row["origin"] == ORIGIN_APPLIED and sha:
            try:
                return await self.repos.read_config(name, sha), f"{name}'s agent.toml at {sha[:12]}"
            except HyperhiveError as exc:
                log.warning("%s: cannot read its applied config (%s); using the copy stored with it", name, exc)
        return config_from_json(row["config_json"]), f"the stored config of {name!r}"

    async def kept_state(self) -> dict[str, dict[str, Any]]:
        """Destroyed agents whose state is kept, by name."""
        return {name: row for name, row in (await self.agents.stored()).items() if row["destroyed_at"]}

    async def pause(self, name: str, reason: str = "paused by the operator") -> None:
        status = self.agents.get(name).status
        status.paused, status.pause_reason = True, reason
        harness = self.harnesses.get(name)
        if harness is not None:
            harness.pause()
        await self.agents.remember(name, paused=1, pause_reason=reason)
        self.events.publish(name, "note", text=f"paused: {reason}")
        self.agents.publish_status(name)

    async def resume(self, name: str, *, lift_spend_cap: bool = True) -> None:
        """Let ``name`` take turns again; if the spend cap paused it, the cap is lifted for the
        rest of the UTC day (unless ``lift_spend_cap`` is False: the day turned).

        A ``failed`` agent's loop gave up after crashing too often: it starts again.
        """
        status = self.agents.get(name).status
        harness = self.harnesses.get(name)
        if harness is not None:
            harness.resume(lift_spend_cap=lift_spend_cap)
        status.paused, status.pause_reason, status.failed = False, "", False
        await self.agents.remember(name, paused=0, pause_reason="", spend_cap_lifted_on=status.spend_cap_lifted_on)
        self.agents.publish_status(name)
        run = self._runs.get(name)
        if harness is not None and run is not None and run.finished.is_set():
            assert self.agent_nursery is not None
            run = self._runs[name] = _AgentRun()
            await self.agent_nursery.start(run.supervise, self, harness)
            self.events.publish(name, "note", text="turn loop started again")

    async def cancel(self, name: str) -> bool:
        """Interrupt ``name``'s current turn, and let ``on_cancel`` plugins let go (end a nap).

        :return: whether a turn was interrupted.
        """
        self.agents.get(name)
        harness = self.harnesses.get(name)
        interrupted = bool(harness and await harness.cancel())
        await await_all(self.pm.hook.on_cancel(hive=self, agent=name))
        return interrupted

    async def set_model(self, name: str, model: str) -> dict[str, Any]:
        """Switch ``name`` to ``model`` once its current turn ends; return its model status."""
        status = self.agents.get(name).status
        check_model(model, self.claude.extra_models)
        if model == status.model:
            status.queued_model = None
        elif status.state in (State.THINKING, State.COMPACTING):
            status.queued_model = model
        else:
            status.queued_model = model
            harness = self.harnesses.get(name)
            if harness is not None:
                await harness.apply_queued_model()
        await self.agents.remember(name, model_override=model)
        self.agents.publish_status(name)
        return {"model": status.model, "queued": status.queued_model, "switched_at": status.model_switched_at}

    async def container_event(self, event: ContainerEvent) -> None:
        """A container started, stopped or crashed: tell the live tail and the ``on_container_event`` hooks.

        Never raises: it runs in the task that noticed the event (a backend's watcher).
        """
        try:
            if event.kind is ContainerEventKind.CRASHED:
                text = f"container crashed: {event.detail}"
                self.events.publish(event.agent, "error", text=text, log=list(event.log_tail))
                # The daemon's log is where an operator without the dashboard looks first.
                log.warning(
                    "agent %s: container crashed: %s; its last output is in its live tail "
                    "(the dashboard's agent page, or `hyperhive events %s --after 0`)",
                    event.agent,
                    event.detail,
                    event.agent,
                )
            await await_all(self.pm.hook.on_container_event(hive=self, event=event))
        except Exception as exc:
            log.exception("reporting a container event of %s failed", event.agent)
            self.events.publish(SYSTEM, "error", where="on_container_event", agent=event.agent, error=repr(exc))

    async def notify(self, recipient: str, event: str, /, **fields: Any) -> Message:
        """Send a hive event (``approval_resolved``, ``container_crash``, …) to an inbox.

        ``recipient`` and ``event`` are positional, so ``fields`` may use those names too.
        """
        return await self.broker.send(SYSTEM, recipient, json.dumps({"event": event, **fields}), kind="event")

    async def _messages_dead(self, messages: list[Message]) -> None:
        """Messages moved to dead-letter: tell the dashboard, the hooks and the manager (docs/broker.md)."""
        from hyperhive_core.dead_letters import report_dead

        if self._dead_held is not None:  # the manager and the plugins are not up yet
            self._dead_held.extend(messages)
            return
        await report_dead(self, messages)

    async def started(self) -> None:
        """The daemon calls this once every agent has started: report what was held meanwhile."""
        held, self._dead_held = self._dead_held or [], None
        await self._messages_dead(held)

    def _message_headers(self, sender: str, recipient: str, kind: str, body: str) -> dict[str, str]:
        """What the ``message_headers`` hooks stamp on a send; the first called wins a name two give."""
        headers: dict[str, str] = {}
        for stamped in self.pm.hook.message_headers(
            hive=self, sender=sender, recipient=recipient, kind=kind, body=body
        ):
            if inspect.iscoroutine(stamped):
                stamped.close()
            if stamped is None:
                continue
            if not isinstance(stamped, Mapping):
                raise PluginError(
                    f"a message_headers hook returned {type(stamped).__name__}; it must return a mapping of "
                    "header names to text, or None, at once (not async)"
                )
            headers = {**stamped, **headers}
        return headers

    async def _message_committed(self, message: Message) -> None:
        """Run the ``on_message`` hooks; a failing one is reported, the message stays sent."""
        try:
            await await_all(self.pm.hook.on_message(hive=self, message=message))
        except Exception as exc:
            log.exception("an on_message hook failed for message %d", message.id)
            self.events.publish(SYSTEM, "error", where="on_message", message_id=message.id, error=repr(exc))


def _forget_agent(name: str, db: sqlite_utils.Database) -> None:
    """Core's records of a purged agent: its row and its turns."""
    db.table("agents").delete_where("name = ?", [name])
    db.table("turns").delete_where("agent = ?", [name])


class _AgentRun:
    """One agent's supervised loop, cancellable on its own."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.finished = trio.Event()

    async def supervise(
        self, hive: Hive, harness: Harness, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hyperhive_core.harness import supervise_agent

        try:
            with self.scope:
                await supervise_agent(hive, harness, task_status=task_status)
        finally:
            self.finished.set()


def make_backend(hive: Hive) -> ContainerBackend:
    """The backend ``[hive] container_backend`` names, from those plugins registered."""
    backends = collect_backends(hive.pm)
    name = hive.settings.container_backend
    if name not in backends:
        raise ConfigError(
            f"{hive.config.path}: hive.container_backend = {name!r} is not available; "
            f"registered backends: {', '.join(sorted(backends))}"
        )
    return backends[name](hive)
