"""The container unit watcher, against a real dbus-daemon with a systemd1 stand-in on it."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from jeepney import DBusAddress, new_signal
from jeepney.io.trio import open_dbus_router

from hyperhive_core import hookimpl
from hyperhive_core.containers import ContainerEvent, ContainerEventKind
from hyperhive_core.containers.dbus_watch import (
    PROPERTIES_INTERFACE,
    UnitState,
    UnitWatcher,
    agent_of_unit,
    event_kind,
    unit_name,
    unit_of_path,
    unit_path,
)
from hyperhive_core.daemon import run_hive
from hyperhive_core.plugins import await_all
from hyperhive_core.supervise import Backoff
from tests.systemd_standin import PrivateBus, SystemdStandin

STARTED, STOPPED, CRASHED = ContainerEventKind.STARTED, ContainerEventKind.STOPPED, ContainerEventKind.CRASHED

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed; `make test` installs Debian's dbus"
)


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    # Not tmp_path: a unix socket's path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="hh-bus-") as directory:
        bus = PrivateBus(Path(directory))
        bus.start()
        try:
            yield bus
        finally:
            bus.stop()


class Events:
    """What the watcher reported, in order."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[ContainerEvent](math.inf)

    async def __call__(self, event: ContainerEvent) -> None:
        await self.send.send(event)

    async def next(self) -> tuple[str, ContainerEventKind]:
        event = await self.receive.receive()
        return event.agent, event.kind

    async def take(self, count: int) -> set[tuple[str, ContainerEventKind]]:
        return {await self.next() for _ in range(count)}

    def pending(self) -> int:
        return self.receive.statistics().current_buffer_used


@asynccontextmanager
async def watching(bus: PrivateBus, standin: SystemdStandin, events: Events) -> AsyncIterator[trio.Nursery]:
    """The stand-in and a watcher on ``bus``; the watcher has reconciled once inside."""
    async with trio.open_nursery() as nursery:
        await nursery.start(standin.serve, bus.address)
        watcher = UnitWatcher(events, address=bus.address, backoff=Backoff(initial=0.05, maximum=0.2))
        await nursery.start(watcher.run)
        yield nursery
        nursery.cancel_scope.cancel()


def test_unit_paths_are_escaped_as_systemd_does():
    assert unit_name("alice") == "container@alice.service"
    assert unit_path("container@alice.service") == "/org/freedesktop/systemd1/unit/container_40alice_2eservice"
    assert unit_path("container@web-2.service") == "/org/freedesktop/systemd1/unit/container_40web_2d2_2eservice"
    assert unit_path("1a.service") == "/org/freedesktop/systemd1/unit/_31a_2eservice"
    assert unit_path("") == "/org/freedesktop/systemd1/unit/_"
    for unit in ("container@web-2.service", "1a.service", "", "caf\u00e9.service"):
        assert unit_of_path(unit_path(unit)) == unit
    assert unit_of_path("/org/freedesktop/systemd1/job/12") is None
    assert agent_of_unit("container@web-2.service") == "web-2"
    assert agent_of_unit("sshd.service") is None


@pytest.mark.parametrize(
    ("active", "sub", "result", "kind"),
    [
        ("active", "running", "success", STARTED),
        ("reloading", "reload", "success", STARTED),
        ("inactive", "dead", "success", STOPPED),
        ("failed", "failed", "exit-code", CRASHED),
        ("failed", "failed", "success", CRASHED),
        ("inactive", "dead", "signal", CRASHED),
        # Restart=on-failure, as nixos-container's units have: systemd is restarting it.
        ("activating", "auto-restart", "exit-code", CRASHED),
        ("activating", "start", "success", None),
        ("deactivating", "stop-sigterm", "success", None),
    ],
)
def test_unit_states_map_to_event_kinds(active, sub, result, kind):
    assert event_kind(UnitState(active, sub, result)) is kind


async def test_events_arrive_within_two_seconds(bus):
    standin, events = SystemdStandin(), Events()
    await standin.set_unit("container@alice.service", "inactive", "dead")
    with trio.fail_after(10):
        async with watching(bus, standin, events):
            assert await events.next() == ("alice", STOPPED)
            for active, sub, result, kind in [
                ("activating", "start", "success", None),
                ("active", "running", None, STARTED),
                ("failed", "failed", "exit-code", CRASHED),
                ("active", "running", "success", STARTED),
                ("deactivating", "stop-sigterm", None, None),
                ("inactive", "dead", None, STOPPED),
            ]:
                await standin.set_unit("container@alice.service", active, sub, result)
                if kind is not None:
                    with trio.fail_after(2):
                        event = await events.receive.receive()
                    assert (event.agent, event.kind) == ("alice", kind)
                    assert active in event.detail
            assert events.pending() == 0


async def test_first_connect_reconciles_every_container_unit(bus):
    standin, events = SystemdStandin(), Events()
    await standin.set_unit("container@alice.service", "active", "running")
    await standin.set_unit("container@bob.service", "failed", "failed", "exit-code")
    await standin.set_unit("container@carol.service", "inactive", "dead")
    await standin.set_unit("container@Not_An_Agent.service", "failed", "failed", "exit-code")
    await standin.set_unit("sshd.service", "failed", "failed", "exit-code")
    with trio.fail_after(5):
        async with watching(bus, standin, events):
            # Started only once the reconcile is done: everything is already here.
            assert events.pending() == 3
            assert await events.take(3) == {("alice", STARTED), ("bob", CRASHED), ("carol", STOPPED)}


async def test_a_burst_of_500_signals_loses_none(bus):
    standin, events = SystemdStandin(), Events()
    agents = [f"a{number:03}" for number in range(500)]
    with trio.fail_after(10):
        async with watching(bus, standin, events):
            for agent in agents:
                await standin.set_unit(f"container@{agent}.service", "active", "running")
            assert [await events.next() for _ in agents] == [(agent, STARTED) for agent in agents]


async def test_a_bus_restart_triggers_a_reconcile(bus):
    standin, events = SystemdStandin(), Events()
    for agent in ("alice", "bob", "erin"):
        await standin.set_unit(f"container@{agent}.service", "active", "running")
    with trio.fail_after(10):
        async with watching(bus, standin, events) as nursery:
            assert await events.take(3) == {("alice", STARTED), ("bob", STARTED), ("erin", STARTED)}

            bus.stop()
            await standin.wait_off_bus()
            # While the bus is down: alice crashes, carol starts, erin's unit is unloaded.
            await standin.set_unit("container@alice.service", "failed", "failed", "exit-code")
            await standin.set_unit("container@carol.service", "active", "running")
            del standin.units["container@erin.service"]
            bus.start()
            await nursery.start(standin.serve, bus.address)

            assert await events.take(3) == {("alice", CRASHED), ("carol", STARTED), ("erin", STOPPED)}
            # Signals flow again on the new connection; bob was not reported twice.
            await standin.set_unit("container@bob.service", "inactive", "dead", "success")
            assert await events.next() == ("bob", STOPPED)


async def test_the_bus_going_away_mid_reconcile_is_survived(bus):
    standin, events = SystemdStandin(), Events()
    await standin.set_unit("container@alice.service", "active", "running")
    standin.answering = False
    watcher = UnitWatcher(events, address=bus.address, backoff=Backoff(initial=0.05, maximum=0.2))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(standin.serve, bus.address)
            nursery.start_soon(watcher.run)
            while "Subscribe" not in standin.ignored:  # the watcher now waits for a reply
                await trio.sleep(0.01)
            bus.stop()
            await standin.wait_off_bus()
            standin.answering = True
            bus.start()
            await nursery.start(standin.serve, bus.address)
            assert await events.next() == ("alice", STARTED)
            nursery.cancel_scope.cancel()


async def test_systemd_reregistering_triggers_a_reconcile(bus):
    standin, events = SystemdStandin(), Events()
    await standin.set_unit("container@alice.service", "active", "running")
    with trio.fail_after(10):
        async with watching(bus, standin, events) as nursery:
            assert await events.next() == ("alice", STARTED)
            # As when systemd re-executes: it leaves the bus and comes back under a new unique name.
            await standin.leave()
            await standin.set_unit("container@alice.service", "failed", "failed", "core-dump")
            await nursery.start(standin.serve, bus.address)
            assert await events.next() == ("alice", CRASHED)


async def test_signals_from_anyone_but_systemd_are_ignored(bus):
    standin, events = SystemdStandin(), Events()
    await standin.set_unit("container@alice.service", "active", "running")
    with trio.fail_after(5):
        async with watching(bus, standin, events):
            assert await events.next() == ("alice", STARTED)
            async with open_dbus_router(bus.address) as impostor:
                emitter = DBusAddress(unit_path("container@alice.service"), interface=PROPERTIES_INTERFACE)
                fake = {"ActiveState": ("s", "failed"), "SubState": ("s", "failed")}
                await impostor.send(new_signal(emitter, "PropertiesChanged", "sa{sv}as", ("x", fake, [])))
            await standin.set_unit("container@alice.service", "inactive", "dead")
            assert await events.next() == ("alice", STOPPED)


async def test_the_watcher_starts_before_the_bus_and_connects_when_it_appears(bus):
    standin, events = SystemdStandin(), Events()
    bus.stop()
    await standin.set_unit("container@alice.service", "active", "running")
    watcher = UnitWatcher(events, address=bus.address, backoff=Backoff(initial=0.05, maximum=0.2))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)  # does not wait for the bus
            bus.start()
            await nursery.start(standin.serve, bus.address)
            assert await events.next() == ("alice", STARTED)
            nursery.cancel_scope.cancel()


class ContainerEvents:
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[str, str, str]](math.inf)

    @hookimpl
    async def on_container_event(self, hive, event):
        await self.send.send((hive.paths.root.name, event.agent, event.kind))


async def test_hook_on_container_event(bus, make_pm, make_config, tmp_path):
    """A unit's crash, seen on D-Bus, reaches every plugin's hook with the hive."""
    plugin = ContainerEvents()
    pm = make_pm(container_events=plugin)
    standin = SystemdStandin()
    await standin.set_unit("container@alice.service", "active", "running")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            config = make_config(pm, hive={"state_dir": str(tmp_path / "state"), "container_backend": "process"})
            hive = await nursery.start(run_hive, config, pm)

            async def report(event: ContainerEvent) -> None:
                await await_all(hive.pm.hook.on_container_event(hive=hive, event=event))

            await nursery.start(standin.serve, bus.address)
            await nursery.start(UnitWatcher(report, address=bus.address).run)
            assert await plugin.receive.receive() == ("state", "alice", STARTED)
            await standin.set_unit("container@alice.service", "failed", "failed", "exit-code")
            assert await plugin.receive.receive() == ("state", "alice", CRASHED)
            nursery.cancel_scope.cancel()
