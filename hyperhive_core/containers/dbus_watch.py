"""Watch the agents' ``container@<name>.service`` units on D-Bus and report what they do.

After ``Subscribe()``, systemd emits ``PropertiesChanged`` on a unit's object path
whenever its state moves: first for the type-specific interface (``Service.Result``),
then for ``Unit`` (``ActiveState``, ``SubState``). The watcher turns those into
``ContainerEvent``s: started, stopped, crashed. On every (re)connect it lists the
units again and reports whatever changed while it was away, so neither a restart of
the bus nor of systemd loses a crash.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import trio
from jeepney import DBusAddress, DBusErrorResponse, HeaderFields, MatchRule, Message, Properties, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.common import RouterClosed
from jeepney.io.trio import DBusRouter, Proxy, open_dbus_router
from jeepney.wrappers import unwrap_msg

from hyperhive_core.containers import ContainerEvent, ContainerEventKind
from hyperhive_core.names import AGENT_NAME
from hyperhive_core.supervise import Backoff

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name=SYSTEMD, interface="org.freedesktop.systemd1.Manager")
UNIT_PATHS = "/org/freedesktop/systemd1/unit"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
UNIT_PATTERN = "container@*.service"
WATCHED = ("ActiveState", "SubState", "Result")

# jeepney drops a matching message when its filter channel is full, silently. A
# start-up or shutdown of the whole hive is a burst of two signals per unit
# transition, so leave room for thousands.
FILTER_BUFFER = 10_000


class BusLost(Exception):
    """The connection to systemd ended: the bus closed it, or systemd re-registered."""


# What ends a connection to systemd, as opposed to a bug; each leads to a reconnect.
BUS_ERRORS = (OSError, trio.EndOfChannel, trio.BrokenResourceError, RouterClosed, DBusErrorResponse, BusLost)

_UNIT_NAME = re.compile(r"^container@(?P<agent>.+)\.service$")
_LETTERS = frozenset(string.ascii_letters.encode())
_DIGITS = frozenset(string.digits.encode())

EventSink = Callable[[ContainerEvent], Awaitable[None]]


def unit_name(agent: str) -> str:
    """The systemd unit that runs ``agent``'s container."""
    return f"container@{agent}.service"


def agent_of_unit(unit: str) -> str | None:
    """The agent a ``container@<agent>.service`` unit runs, else ``None``."""
    match = _UNIT_NAME.match(unit)
    return match["agent"] if match else None


def unit_path(unit: str) -> str:
    """The unit's object path, escaped as systemd does (``bus_label_escape``)."""
    if not unit:
        return f"{UNIT_PATHS}/_"
    label = "".join(
        chr(byte) if byte in _LETTERS or (index > 0 and byte in _DIGITS) else f"_{byte:02x}"
        for index, byte in enumerate(unit.encode())
    )
    return f"{UNIT_PATHS}/{label}"


def unit_of_path(path: str) -> str | None:
    """The unit name an object path under ``/org/freedesktop/systemd1/unit`` stands for."""
    prefix = UNIT_PATHS + "/"
    if not path.startswith(prefix) or "/" in path[len(prefix) :]:
        return None
    label = path[len(prefix) :]
    if label == "_":
        return ""
    try:
        raw = re.sub(rb"_([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), label.encode())
        return raw.decode()
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class UnitState:
    """The unit properties that decide what happened to a container."""

    active_state: str
    sub_state: str = ""
    result: str = ""

    def describe(self) -> str:
        described = f"unit {self.active_state} ({self.sub_state}), result {self.result or 'unknown'}"
        # systemd's result when the kernel OOM-killed a process of the unit (MemoryMax=).
        return f"OOM-killed: over its memory cap ({described})" if self.result == "oom-kill" else described


def event_kind(state: UnitState) -> ContainerEventKind | None:
    """What a unit in ``state`` means for its agent; ``None`` while it is on its way."""
    if state.active_state in ("active", "reloading"):
        return ContainerEventKind.STARTED
    # A failed result also covers a unit that systemd itself is restarting
    # (activating/auto-restart), as nixos-container's units do on failure.
    if state.active_state == "failed" or state.result not in ("", "success"):
        return ContainerEventKind.CRASHED
    if state.active_state == "inactive":
        return ContainerEventKind.STOPPED
    return None


def is_agent_name(name: str) -> bool:
    """Whether ``name`` could be an agent's; other containers on the host are ignored."""
    return bool(AGENT_NAME.fullmatch(name))


class UnitWatcher:
    """Reports the transitions of ``container@*.service`` units to ``on_event``.

    :param on_event: awaited with each event, in order; it must not raise.
    :param address: the bus: ``"SYSTEM"`` or a D-Bus address such as
        ``unix:path=/run/dbus/system_bus_socket``.
    :param is_agent: which container names are the hive's agents.
    """

    def __init__(
        self,
        on_event: EventSink,
        *,
        address: str = "SYSTEM",
        is_agent: Callable[[str], bool] = is_agent_name,
        buffer: int = FILTER_BUFFER,
        backoff: Backoff | None = None,
    ) -> None:
        self.on_event = on_event
        self.address = address
        self.is_agent = is_agent
        self.buffer = buffer
        self.backoff = backoff or Backoff(initial=0.2, maximum=10.0)
        # The last kind reported per agent; it outlives connections, so a
        # reconnect reports only what really changed.
        self._reported: dict[str, ContainerEventKind] = {}
        # Per connection: each property with the serial of the message that carried
        # it. Messages from one sender arrive in serial order, so a signal older than
        # the reconcile's reply never overwrites what the reconcile read.
        self._properties: dict[str, dict[str, tuple[int, str]]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled, reconnecting with backoff whenever the bus goes away.

        Reports started after the first connection reconciled every unit, or after
        it failed (the watcher then keeps retrying in the background).
        """
        failures = 0
        pending: trio.TaskStatus[None] | None = task_status

        def ready() -> None:
            nonlocal pending
            if pending is not None:
                pending.started()
                pending = None

        def reconciled() -> None:
            nonlocal failures
            failures = 0
            ready()

        while True:
            try:
                async with open_dbus_router(self.address) as router:
                    await self._session(router, reconciled)
            except* BUS_ERRORS as group:
                reason = _reason(group)
            failures += 1
            delay = self.backoff.delay(failures)
            log.warning("D-Bus watcher on %s: %s; reconnecting in %.1fs", self.address, reason, delay)
            ready()
            await trio.sleep(delay)

    async def _session(self, router: DBusRouter, reconciled: Callable[[], None]) -> NoReturn:
        """One connection: subscribe, reconcile, then follow signals until the bus goes away."""
        bus = Proxy(message_bus, router)
        owner_changes = MatchRule(
            type="signal", sender="org.freedesktop.DBus", interface="org.freedesktop.DBus", member="NameOwnerChanged"
        )
        owner_changes.add_arg_condition(0, SYSTEMD)
        # Locally the sender is checked by unique name below: a header never
        # carries the well-known name, so a rule with it would match nothing.
        unit_changes = MatchRule(
            type="signal", interface=PROPERTIES_INTERFACE, member="PropertiesChanged", path_namespace=UNIT_PATHS
        )
        from_systemd = MatchRule(
            type="signal",
            sender=SYSTEMD,
            interface=PROPERTIES_INTERFACE,
            member="PropertiesChanged",
            path_namespace=UNIT_PATHS,
        )
        send, receive = trio.open_memory_channel[Message](self.buffer)
        # The filters live as long as the connection, and jeepney closes their
        # channels when it ends. Closing them here as well would race with that
        # teardown (jeepney 0.9 iterates its filters across a checkpoint).
        router.filter(owner_changes, channel=send.clone())
        router.filter(unit_changes, channel=send)
        async with receive:
            await bus.AddMatch(owner_changes)
            await bus.AddMatch(from_systemd)
            (owner,) = await bus.GetNameOwner(SYSTEMD)
            unwrap_msg(await router.send_and_get_reply(new_method_call(MANAGER, "Subscribe")))
            await self._reconcile(router)
            log.info("D-Bus watcher on %s: following %s units of %s", self.address, UNIT_PATTERN, owner)
            reconciled()
            async for message in receive:
                fields = message.header.fields
                if fields.get(HeaderFields.member) == "NameOwnerChanged":
                    raise BusLost(f"{SYSTEMD} is now owned by {message.body[2] or 'nobody'}")
                if fields.get(HeaderFields.sender) != owner:
                    continue
                unit = unit_of_path(fields.get(HeaderFields.path, ""))
                agent = agent_of_unit(unit) if unit else None
                if agent is None or not self.is_agent(agent):
                    continue
                _interface, changed, _invalidated = message.body
                # systemd sends these three with their values (emits-change), never
                # as invalidated-only, so the body has all there is to know.
                values = {name: value for name, (_sig, value) in changed.items() if name in WATCHED}
                await self._update(agent, message.header.serial, values)
        raise BusLost("the bus closed the connection")

    async def _reconcile(self, router: DBusRouter) -> None:
        """Read every container unit's state and report what differs from what was reported."""
        self._properties = {}
        listing = await router.send_and_get_reply(
            new_method_call(MANAGER, "ListUnitsByPatterns", "asas", ([], [UNIT_PATTERN]))
        )
        (units,) = unwrap_msg(listing)
        listed: set[str] = set()
        for name, _description, _load, active, sub, _followed, path, *_job in units:
            agent = agent_of_unit(name)
            if agent is None or not self.is_agent(agent):
                continue
            listed.add(agent)
            self._stamp(agent, listing.header.serial, {"ActiveState": active, "SubState": sub})
            service = DBusAddress(path, bus_name=SYSTEMD, interface=SERVICE_INTERFACE)
            reply = await router.send_and_get_reply(Properties(service).get("Result"))
            try:
                ((_sig, result),) = unwrap_msg(reply)
            except DBusErrorResponse as exc:
                # Unloaded since it was listed: what the listing said stands.
                log.debug("no Result for %s: %s", name, exc)
                result = ""
            await self._update(agent, reply.header.serial, {"Result": result})
        # A unit that is no longer loaded is not running: systemd unloads stopped units.
        for agent in sorted(set(self._reported) - listed):
            await self._report(agent, ContainerEventKind.STOPPED, "unit not loaded")
        log.info("D-Bus watcher on %s: reconciled %d container units", self.address, len(listed))

    def _stamp(self, agent: str, serial: int, values: dict[str, str]) -> None:
        """Record the values, except where a newer message already set that property."""
        known = self._properties.setdefault(agent, {})
        for name, value in values.items():
            if name not in known or known[name][0] < serial:
                known[name] = (serial, value)

    async def _update(self, agent: str, serial: int, values: dict[str, str]) -> None:
        self._stamp(agent, serial, values)
        known = {name: value for name, (_serial, value) in self._properties[agent].items()}
        if "ActiveState" not in known:
            return
        state = UnitState(known["ActiveState"], known.get("SubState", ""), known.get("Result", ""))
        kind = event_kind(state)
        if kind is not None:
            await self._report(agent, kind, state.describe())

    async def _report(self, agent: str, kind: ContainerEventKind, detail: str) -> None:
        if self._reported.get(agent) == kind:
            return
        self._reported[agent] = kind
        log.info("container of %s %s: %s", agent, kind, detail)
        await self.on_event(ContainerEvent(agent, kind, detail))


def _reason(error: BaseException) -> str:
    """The first underlying error of a group, in words."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"
