"""The hive daemon: one trio process that owns the store and runs every service."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from hyperhive_core.broker import Broker, BrokerSection, Message
from hyperhive_core.config import Config, option
from hyperhive_core.events import EventBus, EventsSection
from hyperhive_core.names import SYSTEM
from hyperhive_core.paths import StatePaths, default_state_dir
from hyperhive_core.plugins import HivePluginManager, await_all, call_each, collect
from hyperhive_core.store import Store
from hyperhive_core.supervise import supervise

log = logging.getLogger(__name__)


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


class Hive:
    """What a running daemon hands to plugins: config, plugins, store, paths, broker, events."""

    def __init__(self, config: Config, pm: HivePluginManager, store: Store, paths: StatePaths) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.paths = paths
        self.events = EventBus(store, config.section("events", EventsSection))
        self.broker = Broker(store, config.section("broker", BrokerSection), on_commit=self._message_committed)

    async def _message_committed(self, message: Message) -> None:
        """Run the ``on_message`` hooks; a failing one is reported, the message stays sent."""
        try:
            await await_all(self.pm.hook.on_message(hive=self, message=message))
        except Exception as exc:
            log.exception("an on_message hook failed for message %d", message.id)
            self.events.publish(SYSTEM, "error", where="on_message", message_id=message.id, error=repr(exc))


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
    """Open the store, start every plugin service supervised, and run until cancelled."""
    paths = state_paths(config)
    paths.ensure()
    store = Store(paths.database)
    try:
        store.migrate(collect_migrations(pm))
        hive = Hive(config, pm, store, paths)
        # No turn survives a restart: whatever was leased goes back to the queue.
        dead = await hive.broker.requeue_leased()
        if dead:
            log.warning("messages %s reached [broker] max_attempts and moved to dead-letter", dead)
        async with trio.open_nursery() as core:
            await core.start(hive.events.serve)
            await core.start(hive.broker.serve)
            await await_all(pm.hook.on_startup(hive=hive))
            try:
                async with trio.open_nursery() as nursery:
                    for owner, services in call_each(pm, "hive_services", hive=hive):
                        for service in services or ():
                            name = f"{owner}:{getattr(service, '__name__', repr(service))}"
                            await nursery.start(supervise, name, service)
                    log.info("hive up: state dir %s", paths.root)
                    task_status.started(hive)
                    await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await await_all(pm.hook.on_shutdown(hive=hive))
    finally:
        store.close()


def run_daemon(config: Config, pm: HivePluginManager) -> int:
    """Run the hive in the foreground until SIGINT or SIGTERM; return the exit code."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(run_hive, config, pm)
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    log.info("hive stopped")
    return 0
