"""A real private dbus-daemon, and a small stand-in for systemd1 on it.

The stand-in owns ``org.freedesktop.systemd1`` and answers what the container
watcher asks (``Subscribe``, ``ListUnitsByPatterns``, ``GetUnit``, properties of
units), and emits ``PropertiesChanged`` the way systemd does when a test moves a
unit: the ``Service`` interface first, then ``Unit``, only once someone subscribed.
"""

from __future__ import annotations

import fnmatch
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio
from jeepney import DBusAddress, HeaderFields, MatchRule, Message, new_error, new_method_return, new_signal
from jeepney.bus_messages import DBusNameFlags, message_bus
from jeepney.io.trio import DBusRouter, Proxy, open_dbus_router

from hyperhive_core.containers.dbus_watch import (
    MANAGER,
    PROPERTIES_INTERFACE,
    SERVICE_INTERFACE,
    SYSTEMD,
    unit_of_path,
    unit_path,
)

UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A ``dbus-daemon`` listening on ``<directory>/bus``; restartable at the same address."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "bus"
        self.address = f"unix:path={self.socket}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        config = self.directory / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.socket))
        with (self.directory / "dbus-daemon.log").open("a") as log:
            self.process = subprocess.Popen(
                ["dbus-daemon", f"--config-file={config}", "--print-address", "--nofork"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        # The address is printed once the socket listens.
        assert self.process.stdout is not None
        assert self.process.stdout.readline().startswith(self.address)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=5)
            self.process.stdout.close()
            self.process = None


@dataclass
class Unit:
    name: str
    active_state: str
    sub_state: str
    result: str = "success"

    def properties(self, interface: str) -> dict[str, tuple[str, str]]:
        if interface == UNIT_INTERFACE:
            return {
                "Id": ("s", self.name),
                "LoadState": ("s", "loaded"),
                "ActiveState": ("s", self.active_state),
                "SubState": ("s", self.sub_state),
            }
        if interface == SERVICE_INTERFACE:
            return {"Result": ("s", self.result)}
        return {}


class SystemdStandin:
    """``org.freedesktop.systemd1`` for tests: its units live in ``units``, by name."""

    def __init__(self) -> None:
        self.units: dict[str, Unit] = {}
        self.subscribers: set[str] = set()
        self.answering = True
        """While false, calls go unanswered, as from a systemd that hangs; ``ignored`` lists them."""
        self.ignored: list[str] = []
        self._router: DBusRouter | None = None
        self._scope = trio.CancelScope()
        self._off_bus = trio.Event()

    async def serve(self, address: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the name and answer calls until ``leave``, or until the bus goes away."""
        self._scope, self._off_bus = trio.CancelScope(), trio.Event()
        try:
            with self._scope:
                async with open_dbus_router(address) as router:
                    # Without a local filter jeepney drops incoming calls; like the
                    # watcher's, it lives as long as the connection.
                    send, calls = trio.open_memory_channel[Message](1000)
                    router.filter(MatchRule(type="method_call"), channel=send)
                    (reply,) = await Proxy(message_bus, router).RequestName(SYSTEMD, DBusNameFlags.do_not_queue)
                    assert reply == 1, f"could not own {SYSTEMD}: {reply}"
                    self._router = router
                    task_status.started()
                    async for call in calls:
                        if self.answering:
                            await router.send(self._answer(call))
                        else:
                            self.ignored.append(call.header.fields[HeaderFields.member])
        except* (trio.EndOfChannel, trio.BrokenResourceError):
            pass  # the bus went away, as a test wanted
        finally:
            self._router = None
            self.subscribers.clear()
            self._off_bus.set()

    async def leave(self) -> None:
        """Drop off the bus, as systemd does when it re-executes."""
        self._scope.cancel()
        await self.wait_off_bus()

    async def wait_off_bus(self) -> None:
        """Wait until the connection has ended (after ``leave``, or once the bus stopped)."""
        await self._off_bus.wait()

    async def set_unit(self, name: str, active_state: str, sub_state: str, result: str | None = None) -> None:
        """Move a unit (creating it if new) and signal the change, as systemd would."""
        unit = self.units.setdefault(name, Unit(name, active_state, sub_state))
        unit.active_state, unit.sub_state = active_state, sub_state
        if result is not None:
            unit.result = result
            await self._emit(unit, SERVICE_INTERFACE)
        await self._emit(unit, UNIT_INTERFACE)

    async def _emit(self, unit: Unit, interface: str) -> None:
        if self._router is None or not self.subscribers:
            return
        changed = {key: value for key, value in unit.properties(interface).items() if key != "Id"}
        emitter = DBusAddress(unit_path(unit.name), interface=PROPERTIES_INTERFACE)
        await self._router.send(new_signal(emitter, "PropertiesChanged", "sa{sv}as", (interface, changed, [])))

    def _answer(self, call: Message) -> Message:
        fields = call.header.fields
        path, member = fields[HeaderFields.path], fields[HeaderFields.member]
        interface = fields.get(HeaderFields.interface)
        if path == MANAGER.object_path and interface == MANAGER.interface:
            return self._manager(call, member)
        unit = self.units.get(unit_of_path(path) or "")
        if unit is not None and interface == PROPERTIES_INTERFACE:
            properties = unit.properties(call.body[0])
            if member == "GetAll":
                return new_method_return(call, "a{sv}", (properties,))
            if member == "Get" and call.body[1] in properties:
                return new_method_return(call, "v", (properties[call.body[1]],))
            return new_error(call, "org.freedesktop.DBus.Error.UnknownProperty", "s", (call.body[1],))
        return new_error(call, "org.freedesktop.DBus.Error.UnknownObject", "s", (f"no {path}",))

    def _manager(self, call: Message, member: str) -> Message:
        if member == "Subscribe":
            self.subscribers.add(call.header.fields[HeaderFields.sender])
            return new_method_return(call)
        if member == "ListUnitsByPatterns":
            states, patterns = call.body
            listed = [
                (u.name, "", "loaded", u.active_state, u.sub_state, "", unit_path(u.name), 0, "", "/")
                for u in self.units.values()
                if any(fnmatch.fnmatchcase(u.name, p) for p in patterns)
                and (not states or u.active_state in states or u.sub_state in states)
            ]
            return new_method_return(call, "a(ssssssouso)", (listed,))
        if member == "GetUnit":
            if call.body[0] in self.units:
                return new_method_return(call, "o", (unit_path(call.body[0]),))
            return new_error(call, "org.freedesktop.systemd1.NoSuchUnit", "s", (f"Unit {call.body[0]} not loaded.",))
        return new_error(call, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"no method {member}",))
