"""The hive daemon: one trio process that owns the store and runs every service."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import trio

from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.cluster import PlacedElsewhere
from hyperhive_core.config import Config
from hyperhive_core.errors import HyperhiveError, StoreError
from hyperhive_core.hive import Hive, HiveSection
from hyperhive_core.hostsock import group_id, serve_host_socket
from hyperhive_core.paths import StatePaths, default_state_dir
from hyperhive_core.plugins import HivePluginManager, call_async, call_each, collect
from hyperhive_core.store import Store
from hyperhive_core.supervise import supervise

if TYPE_CHECKING:
    from hyperhive_core.rehearsal import RehearsalServer

log = logging.getLogger(__name__)


def state_paths(config: Config) -> StatePaths:
    return StatePaths(config.hive.state_dir or default_state_dir())


def collect_migrations(pm: HivePluginManager) -> dict[str, list]:
    """Each owner's migrations from ``register_migrations``; one owner per plugin."""
    return collect(pm, "register_migrations", "migration owner", lambda owner, steps: (owner, list(steps))).items


async def run_hive(
    config: Config,
    pm: HivePluginManager,
    *,
    task_status: trio.TaskStatus[Hive] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the store, start the core and every plugin service, then the agents; run until cancelled."""
    paths = state_paths(config)
    admin_group = config.section("hive", HiveSection).admin_group
    paths.ensure(group_id(admin_group) if admin_group else None)
    with hold_state_dir(paths):
        await _run_hive(config, pm, paths, task_status)


async def _run_hive(
    config: Config, pm: HivePluginManager, paths: StatePaths, task_status: trio.TaskStatus[Hive]
) -> None:
    check_database_present(paths)
    store = Store(paths.database)
    try:
        store.migrate(collect_migrations(pm))
        hive = Hive(config, pm, store, paths)
        hive.rehearsal = rehearsal_server(hive)
        # Every agent's config is checked before anything starts.
        agents = {
            name: (check_agent_config(pm, name, agent_config, where, extra_models=hive.claude.extra_models), origin)
            for name, (agent_config, origin, where) in (await agents_to_start(hive)).items()
        }
        # No turn survives a restart: whatever was leased goes back to the queue (or
        # to dead-letter, reported once the hive is up).
        await hive.broker.requeue_leased()
        async with trio.open_nursery() as core:
            services = CoreServices(core)
            try:
                await services.start(hive.events.serve)
                await services.start(hive.broker.serve)
                if hive.cluster is not None:
                    await services.start(hive.cluster.serve)
                await services.start(hive.surface.serve)
                await services.start(hive.model_proxy.serve)
                if hive.rehearsal is not None:
                    await services.start(hive.rehearsal.serve)
                await call_async(pm, "on_startup", hive=hive)
                await run_agents(hive, pm, agents, paths, task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await services.stop()
    finally:
        store.close()


def check_database_present(paths: StatePaths) -> None:
    """Refuse to start afresh on a state dir whose agents' repos outlived its database.

    A new, empty ``hive.db`` there would forget those agents, their messages and
    approvals without a word. :raises StoreError: the database is missing.
    """
    applied = paths.root / "applied"
    if paths.database.exists() or not applied.is_dir() or not any(applied.iterdir()):
        return
    raise StoreError(
        f"{paths.database} is missing, but {applied} holds agents' configs: the database was lost or moved. "
        "Put it back, or restore the state dir from a backup (docs/operations.md#restore); "
        "to start afresh instead, move the state dir away"
    )


@contextlib.contextmanager
def hold_state_dir(paths: StatePaths) -> Iterator[None]:
    """Lock the state dir for this daemon's life; the kernel drops the lock when it dies, ``kill -9`` too.

    Two daemons on one state dir would each requeue the other's leased messages and
    take over its host socket. :raises HyperhiveError: another daemon holds it.
    """
    paths.daemon_lock.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise HyperhiveError(
                f"another hyperhive daemon (pid {holder}) runs on state dir {paths.root}; "
                "stop it first (`systemctl stop hyperhive`), or give this one another [hive] state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


async def run_agents(
    hive: Hive,
    pm: HivePluginManager,
    agents: dict[str, tuple[AgentConfig, str]],
    paths: StatePaths,
    task_status: trio.TaskStatus[Hive],
) -> None:
    """Start the plugin services and the agents, serve the host socket; run until cancelled."""
    try:
        async with trio.open_nursery() as nursery:
            for owner, services in call_each(pm, "hive_services", hive=hive):
                for service in services or ():
                    name = f"service {owner}:{getattr(service, '__name__', repr(service))}"
                    await nursery.start(supervise, name, service)
            hive.agent_nursery = nursery
            for name, (agent_config, origin) in agents.items():
                try:
                    await hive.add_agent(name, agent_config, origin)
                except PlacedElsewhere as exc:  # another host runs it (the manager, on all hosts but one)
                    log.info("agent %s is not started here: %s", name, exc)
            await hive.started()
            await hive.approvals.settle_interrupted()
            await nursery.start(serve_host_socket, hive, paths.host_socket, hive.settings.admin_group)
            log.info("hive up: state dir %s, agents: %s", paths.root, ", ".join(hive.harnesses))
            task_status.started(hive)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await call_async(pm, "on_shutdown", hive=hive)


class CoreServices:
    """The core services, each shielded from the daemon's stop: ``stop`` ends them, last started first.

    They outlive the agents, so a turn cut short still has the broker (and the events,
    the cluster, the model) while it gives its messages back.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[trio.CancelScope, trio.Event]] = []

    async def start(self, serve: Callable[..., Awaitable[None]]) -> None:
        await self._nursery.start(self._run, serve)

    async def _run(self, serve: Callable[..., Awaitable[None]], *, task_status: trio.TaskStatus[None]) -> None:
        scope, ended = trio.CancelScope(shield=True), trio.Event()
        self._running.append((scope, ended))
        try:
            with scope:
                await serve(task_status=task_status)
        finally:
            ended.set()

    async def stop(self) -> None:
        for scope, ended in reversed(self._running):
            scope.cancel()
            await ended.wait()


async def agents_to_start(hive: Hive) -> dict[str, tuple[AgentConfig, str, str]]:
    """The agents to run, with their config, origin and where the config came from.

    The manager always; the agents in ``[agents]``; those spawned earlier and not
    destroyed; and, on the rehearsal model, every agent the scenario scripts. An
    agent once declared in config but no longer there becomes kept state.
    """
    path = hive.config.path
    declared: dict[str, AgentConfig] = dict(hive.config.section("agents"))
    if hive.rehearsal is not None:
        for name in hive.rehearsal.director.scenario.agents:
            if name != "*":
                declared.setdefault(name, AgentConfig())
    manager = hive.settings.manager
    declared.setdefault(manager, AgentConfig())
    chosen = {name: (config, "config", f"{path} [agents.{name}]") for name, config in sorted(declared.items())}
    for name, row in (await hive.agents.stored()).items():
        if name in chosen or row["destroyed_at"]:
            continue
        if row["origin"] == "config":
            log.warning("agent %s is no longer in %s; its state is kept (hyperhive kept)", name, path)
            await hive.agents.remember(name, destroyed_at=time.time())
            await hive.backend.stop(hive.container_spec_for(name, row["role"]))
        else:
            config, where = await hive.stored_config(name, row)
            chosen[name] = (config, row["origin"], where)
    # The manager first: the others may message it as soon as they start.
    return {manager: chosen.pop(manager), **chosen}


def rehearsal_server(hive: Hive) -> RehearsalServer | None:
    """The rehearsal model, when asked for or when there are no Claude credentials; else None."""
    from hyperhive_core.rehearsal import RehearsalServer, load_demo_scenario, load_scenario

    scenario_path = hive.claude.rehearsal_scenario
    credentials = hive.claude.base_url or any(
        os.environ.get(key) for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")
    )
    if scenario_path is None and credentials:
        log.info("agents talk to %s", hive.claude.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "Anthropic")
        return None
    scenario = load_scenario(scenario_path) if scenario_path else load_demo_scenario()
    why = f"[claude] rehearsal_scenario = {scenario_path}" if scenario_path else "no Claude credentials configured"
    for line in REHEARSAL_BANNER.format(why=why, source=scenario.source).splitlines():
        log.warning(line)
    return RehearsalServer(scenario)


REHEARSAL_BANNER = """************************************************************************
*  REHEARSAL MODEL: agents talk to a scripted stand-in, not to Claude.  *
************************************************************************
  why:      {why}
  scenario: {source}
  For real Claude, set ANTHROPIC_API_KEY (or [claude] base_url) and restart."""


def run_daemon(config: Config, pm: HivePluginManager) -> int:
    """Run the hive in the foreground until SIGINT or SIGTERM; return the exit code."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(run_hive, config, pm)
                # Everything built at startup lives as long as the daemon: keep it out of
                # full collections, whose pauses otherwise show in live streams' latency.
                gc.freeze()
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    log.info("hive stopped")
    return 0
