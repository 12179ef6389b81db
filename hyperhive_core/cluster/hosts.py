"""The NATS half of a hive across hosts: ``Cluster`` (imported only when ``[cluster] host`` is set)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api

from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import NO_SUITABLE_PEERS, UNREACHABLE, connect_options, until_answered
from hyperhive_core.cluster import ClusterSection, HostDown, PlacedElsewhere, forwarded
from hyperhive_core.errors import HyperhiveError, StoreError
from hyperhive_core.events import Event
from hyperhive_core.natsbridge import AsyncioThread

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

T = TypeVar("T")

# A watch or subscription asks again after this long without news (a cancelled one stops at once).
WAIT_SECONDS = 30.0
# Local events waiting to go out to the other hosts; beyond it they stay local (and a warning says so).
EVENT_BUFFER = 10_000
EVENT_BATCH = 200


@dataclass(frozen=True)
class HostInfo:
    """One host as its last heartbeat described it."""

    name: str
    last_seen: float
    agents: int
    started_at: float
    stopped: bool
    """It said goodbye: its daemon stopped cleanly."""

    def up(self, down_after: float, now: float) -> bool:
        return not self.stopped and now - self.last_seen <= down_after

    def to_json(self, down_after: float, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "up": self.up(down_after, now),
            "agents": self.agents,
            "last_seen": self.last_seen,
            "started_at": self.started_at,
        }


class Cluster:
    """This host's membership in the hive: ``hive.cluster``. Run ``serve`` before agents start."""

    def __init__(self, hive: Hive, section: ClusterSection, jetstream: JetStreamSection) -> None:
        self.hive = hive
        self.section = section
        self.jetstream = jetstream
        self.host = section.host
        self.options = connect_options(jetstream)
        self.where = ", ".join(jetstream.urls)
        self.prefix = f"hive.{jetstream.name}"
        self.placement: dict[str, str] = {}
        """Every placed agent's host, by name, as the placement bucket says (kept current by a watch)."""
        self.hosts: dict[str, HostInfo] = {}
        self._bridge: AsyncioThread | None = None
        self._nc: nats.NATS | None = None
        self._placement_kv: Any = None
        self._hosts_kv: Any = None
        self._started_at = time.time()
        self._outgoing, self._outgoing_receive = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._dropping = False
        self._watchers: list[Any] = []
        self._calls = 0
        """Calls on the NATS loop under way, which must end before the loop stops."""

    # -- the connection --------------------------------------------------------------------

    def _connection(self) -> nats.NATS:
        if self._nc is None:
            raise self._stopping()
        return self._nc

    def _stopping(self) -> StoreError:
        return StoreError(f"host {self.host} is not connected to the NATS cluster at {self.where}: it is stopping")

    async def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        bridge = self._bridge
        if bridge is None:
            raise self._stopping()
        self._calls += 1
        try:
            return await bridge.run(make)
        except nats.js.errors.APIError as exc:
            raise StoreError(f"the NATS cluster at {self.where} refused the request: {exc.description}") from exc
        except UNREACHABLE as exc:
            raise StoreError(
                f"the NATS cluster at {self.where} did not answer ({type(exc).__name__}: {exc or 'no reply'}); "
                "check that its nodes are up and reachable"
            ) from exc
        finally:
            self._calls -= 1

    async def _kv(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """A bucket operation, asked again while its stream elects a leader (up to the request timeout): a
        repeat is harmless, as puts and deletes are idempotent and a create that finds its own key is done."""
        timeout = self.jetstream.request_timeout_seconds
        return await self._call(lambda: until_answered(make, timeout))

    async def _open(self) -> None:
        """On the loop: connect (nats-py reconnects by itself from then on) and open both buckets."""
        timeout = self.jetstream.request_timeout_seconds
        nc = nats.NATS()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=self.jetstream.urls,
                    name=f"hyperhive {self.jetstream.name} host {self.host}",
                    connect_timeout=int(timeout) or 1,  # whole seconds, as nats-py declares it
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    error_cb=_log_client_error,
                    **self.options,
                ),
                timeout,
            )
            js = nc.jetstream(timeout=timeout)
            self._placement_kv, self._hosts_kv = [
                await _bucket(js, self._bucket_config(kind), timeout) for kind in ("PLACEMENT", "HOSTS")
            ]
        except BaseException:
            await nc.close()
            raise
        self._nc = nc

    def _bucket_config(self, kind: str) -> api.KeyValueConfig:
        return api.KeyValueConfig(
            bucket=f"HIVE_{self.jetstream.name}_{kind}",
            history=1,
            replicas=self.jetstream.replicas,
            storage=api.StorageType(self.jetstream.storage),
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the hive: heartbeat, learn the placement and the hosts, answer forwarded commands,
        exchange events; ready once the placement is known. Runs until cancelled, then says goodbye."""
        self._bridge = AsyncioThread(f"nats cluster {self.host}")
        try:
            try:
                await self._bridge.run(self._open)
            except UNREACHABLE as exc:
                raise StoreError(
                    f"cannot join the hive's hosts: the NATS cluster at {self.where} did not answer "
                    f"({type(exc).__name__}: {exc or 'no reply'}); check [jetstream] urls and that its nodes are up"
                ) from exc
            await self._heartbeat()
            async with trio.open_nursery() as nursery:
                placement_known, hosts_known = trio.Event(), trio.Event()
                nursery.start_soon(self._follow, self._placement_kv, self._placed, placement_known)
                nursery.start_soon(self._follow, self._hosts_kv, self._heard, hosts_known)
                with trio.fail_after(self.jetstream.request_timeout_seconds * 4):
                    await placement_known.wait()
                    await hosts_known.wait()
                await nursery.start(self._answer_commands)
                await nursery.start(self._receive_events)
                nursery.start_soon(self._send_events)
                nursery.start_soon(self._keep_beating)
                log.info("host %s joined the hive %s on %s", self.host, self.jetstream.name, self.where)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._goodbye()

    async def _goodbye(self) -> None:
        if self._bridge is None:
            return
        bridge, nc, self._bridge, self._nc = self._bridge, self._nc, None, None
        if nc is not None:
            with trio.move_on_after(self.jetstream.request_timeout_seconds):
                try:
                    record = self._heartbeat_record(stopped=True)
                    timeout = self.jetstream.request_timeout_seconds
                    await bridge.run(lambda: until_answered(lambda: self._hosts_kv.put(self.host, record), timeout))
                except UNREACHABLE as exc:
                    log.warning("could not tell the other hosts this one stops: %r", exc)
            with trio.move_on_after(self.jetstream.request_timeout_seconds):
                for watcher in self._watchers:  # its ordered consumer's tasks end with it
                    await bridge.run(watcher.stop)
                await bridge.run(nc.close)
        # Calls cancelled meanwhile (a forwarded command whose client left) end on the loop:
        # stopping it under them would leave them waiting for ever.
        with trio.move_on_after(self.jetstream.request_timeout_seconds):
            while self._calls:
                await trio.sleep(0.01)
        bridge.stop()

    # -- heartbeats and hosts ----------------------------------------------------------------

    def _heartbeat_record(self, *, stopped: bool = False) -> bytes:
        record = {
            "last_seen": time.time(),
            "agents": len(self.hive.harnesses),
            "started_at": self._started_at,
            "stopped": stopped,
        }
        return json.dumps(record).encode()

    async def _heartbeat(self) -> None:
        record = self._heartbeat_record()
        await self._kv(lambda: self._hosts_kv.put(self.host, record))

    async def _keep_beating(self) -> None:
        while True:
            await trio.sleep(self.section.heartbeat_seconds)
            try:
                await self._heartbeat()
            except StoreError as exc:
                log.warning("heartbeat of host %s not stored: %s", self.host, exc)

    def _heard(self, host: str, value: bytes | None) -> None:
        if value is None:
            self.hosts.pop(host, None)
            return
        record = json.loads(value)
        self.hosts[host] = HostInfo(
            host, record["last_seen"], record["agents"], record["started_at"], bool(record.get("stopped"))
        )

    def is_up(self, host: str) -> bool:
        """Whether ``host`` heartbeats (this host always does, while it runs)."""
        info = self.hosts.get(host)
        return host == self.host or (info is not None and info.up(self.section.down_after_seconds, time.time()))

    def down_reason(self, host: str) -> str:
        """Why ``host`` counts as down, for errors and the agent list."""
        info = self.hosts.get(host)
        if info is None:
            return f"host {host!r} has never sent a heartbeat"
        if info.stopped:
            return f"host {host!r} stopped {time.time() - info.last_seen:.0f} s ago"
        return f"host {host!r} is down: its last heartbeat was {time.time() - info.last_seen:.0f} s ago"

    def status(self) -> dict[str, Any]:
        """The hosts as ``hyperhive status`` and the dashboard show them."""
        now = time.time()
        down_after = self.section.down_after_seconds
        return {
            "host": self.host,
            "hosts": [self.hosts[name].to_json(down_after, now) for name in sorted(self.hosts)],
        }

    # -- placement --------------------------------------------------------------------------

    def _placed(self, name: str, value: bytes | None) -> None:
        remote = self.hive.agents.directory.remote
        if value is None:
            self.placement.pop(name, None)
            remote.discard(name)
            return
        host = value.decode()
        self.placement[name] = host
        if host == self.host:
            remote.discard(name)
        else:
            remote.add(name)

    def elsewhere(self, name: object) -> str | None:
        """The other host ``name`` is placed on, or None (here, or nowhere)."""
        host = self.placement.get(name) if isinstance(name, str) else None
        return None if host in (None, self.host) else host

    def check_free(self, name: str) -> None:
        """Refuse a name another host holds."""
        host = self.elsewhere(name)
        if host is not None:
            raise PlacedElsewhere(
                f"the name {name!r} is taken hive-wide: an agent of that name is placed on host {host!r}; "
                "choose another name"
            )

    async def claim(self, name: str) -> None:
        """Place ``name`` on this host, unless another host holds it (``PlacedElsewhere``, naming it)."""
        try:
            await self._kv(lambda: self._placement_kv.create(name, self.host.encode()))
        except StoreError as exc:
            if not isinstance(exc.__cause__, nats.js.errors.KeyWrongLastSequenceError):
                raise
            entry = await self._kv(lambda: self._placement_kv.get(name))
            holder = entry.value.decode()
            if holder != self.host:
                self.placement[name] = holder
                self.hive.agents.directory.remote.add(name)
                self.check_free(name)
        self._placed(name, self.host.encode())

    async def release(self, name: str) -> None:
        """Give up ``name`` (its agent is gone for good): another host may take it."""
        if self.placement.get(name) == self.host:
            await self._kv(lambda: self._placement_kv.delete(name))
            self._placed(name, None)

    def other_host(self, host: object) -> str | None:
        """``host`` if it is another host of the hive; None for this one, or none; an error naming the
        hive's hosts for a name that is neither."""
        if host is None or host == self.host:
            return None
        if not isinstance(host, str) or host not in self.hosts:
            known = ", ".join(sorted({*self.hosts, self.host}))
            raise HyperhiveError(f"no host named {host!r} in this hive; its hosts: {known}")
        return host

    def manager_host(self) -> str | None:
        """The host that runs the manager, when it is another one."""
        return self.elsewhere(self.hive.agents.manager)

    def least_busy_host(self) -> str:
        """The up host with the fewest placed agents (this one on a tie): where a new agent goes
        when nobody says."""
        counts = {host: 0 for host in self.hosts if self.is_up(host)} | {self.host: 0}
        for host in self.placement.values():
            if host in counts:
                counts[host] += 1
        return min(counts, key=lambda host: (counts[host], host != self.host, host))

    async def _follow(self, kv: Any, apply: Callable[[str, bytes | None], None], known: trio.Event) -> None:
        """Keep ``apply``ing a bucket's changes (a deleted key as None); ``known`` once it is read whole."""
        watcher = await self._kv(kv.watchall)
        self._watchers.append(watcher)
        while True:
            try:
                entry = await self._call(lambda: _next_update(watcher))
            except StoreError as exc:
                log.warning("watching the hive's hosts and placement: %s", exc)
                await trio.sleep(self.section.heartbeat_seconds)
                continue
            if entry is _NOTHING:
                continue
            if entry is None:  # the bucket's current contents are all in
                known.set()
                continue
            apply(entry.key, None if entry.operation in ("DEL", "PURGE") else entry.value)

    # -- forwarded host commands ------------------------------------------------------------

    def check_up(self, host: str, agent: str | None = None) -> None:
        if not self.is_up(host):
            about = f"{agent!r} runs on host {host!r}, which is down" if agent else self.down_reason(host)
            raise HostDown(
                f"{about} ({self.down_reason(host)}); start its daemon (hyperhive up on {host}), then try again"
            )

    async def forward(
        self, host: str, cmd: str, arguments: dict[str, Any], agent: str | None = None, timeout: float | None = None
    ) -> Any:
        """Run host command ``cmd`` on ``host`` and return its result, or raise its error as if it were local.

        :param timeout: how long it may take; default ``[cluster] forward_timeout_seconds``.
        """
        self.check_up(host, agent)
        subject = f"{self.prefix}.host.{host}.cmd"
        data = json.dumps({"cmd": cmd, **arguments}, default=str).encode()
        timeout = timeout or self.section.forward_timeout_seconds
        nc = self._connection()
        reply = await self._call(lambda: _request(nc, subject, data, timeout))
        if reply is None:
            raise HostDown(
                f"host {host!r}{f', where {agent!r} runs,' if agent else ''} did not answer within {timeout:g} s "
                f"({self.down_reason(host) if not self.is_up(host) else 'it may be busy or stopping'}); try again"
            )
        answer = json.loads(reply)
        if "error" in answer:
            raise HyperhiveError(answer["error"])
        return answer["ok"]

    async def _answer_commands(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from hyperhive_core.hostsock import _dispatch as dispatch
        from hyperhive_core.hostsock import collect_host_commands

        commands = collect_host_commands(self.hive.pm)
        nc = self._connection()
        sub = await self._call(lambda: nc.subscribe(f"{self.prefix}.host.{self.host}.cmd"))
        task_status.started()

        async def answer(msg: Any) -> None:
            try:
                request = json.loads(msg.data)
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("not a command")
            except ValueError:
                reply = {"error": 'a forwarded command must be a JSON object with a "cmd" string'}
            else:
                with forwarded():
                    reply = await dispatch(self.hive, commands, request)
            data = json.dumps(reply, default=str).encode()
            try:
                await self._call(lambda: msg.respond(data))
            except StoreError as exc:
                log.warning("could not answer a forwarded %s: %s", request.get("cmd"), exc)

        async with trio.open_nursery() as nursery:
            while True:
                msg = await self._next(sub)
                if msg is not None:
                    nursery.start_soon(answer, msg)

    async def _next(self, sub: Any) -> Any:
        """A subscription's next message, or None: none came for a while, or the cluster is away
        (nats-py reconnects and resubscribes by itself; this asks again after a heartbeat)."""
        try:
            return await self._call(lambda: _next_msg(sub))
        except StoreError as exc:
            log.warning("host %s: %s", self.host, exc)
            await trio.sleep(self.section.heartbeat_seconds)
            return None

    # -- events across hosts ----------------------------------------------------------------

    def offer_event(self, event: Event) -> None:
        """The event bus's ``forward``: queue a local event for the other hosts; never waits."""
        try:
            self._outgoing.send_nowait(event)
            self._dropping = False
        except trio.WouldBlock:
            if not self._dropping:
                self._dropping = True
                log.warning("events for the other hosts are %d behind; newer ones stay on this host", EVENT_BUFFER)

    async def _send_events(self) -> None:
        subject = f"{self.prefix}.events.{self.host}"
        nc = self._connection()
        async for event in self._outgoing_receive:
            batch = [event]
            while len(batch) < EVENT_BATCH:
                try:
                    batch.append(self._outgoing_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            payloads = [
                json.dumps({"agent": e.agent, "type": e.type, "data": e.data, "at": e.at}).encode() for e in batch
            ]
            try:
                await self._call(functools.partial(_publish_all, nc, subject, payloads))
            except StoreError as exc:
                log.warning("%d event(s) not sent to the other hosts: %s", len(batch), exc)

    async def _receive_events(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nc = self._connection()
        own = f"{self.prefix}.events.{self.host}"
        sub = await self._call(lambda: nc.subscribe(f"{self.prefix}.events.*"))
        task_status.started()
        while True:
            msg = await self._next(sub)
            if msg is None or msg.subject == own:
                continue
            host = msg.subject.rsplit(".", 1)[1]
            try:
                record = json.loads(msg.data)
                self.hive.events.merge(host, record["agent"], record["type"], record["data"])
            except (ValueError, KeyError, TypeError, HyperhiveError) as exc:
                log.warning("an event from host %s was not understood: %r", host, exc)


# -- on the NATS loop ----------------------------------------------------------------------

_NOTHING: Any = object()


async def _bucket(js: Any, config: api.KeyValueConfig, timeout: float) -> Any:
    """Open (creating if need be) a KV bucket, asked again while the cluster is not ready for it."""
    try:
        return await until_answered(lambda: js.create_key_value(config), timeout)
    except nats.js.errors.BadRequestError as exc:
        if getattr(exc, "err_code", None) == NO_SUITABLE_PEERS:
            raise
        return await js.key_value(config.bucket)  # it exists with other settings: use it as it is


async def _next_update(watcher: Any) -> Any:
    try:
        return await watcher.updates(timeout=WAIT_SECONDS)
    except nats.errors.TimeoutError:
        return _NOTHING


async def _next_msg(sub: Any) -> Any:
    try:
        return await sub.next_msg(timeout=WAIT_SECONDS)
    except nats.errors.TimeoutError:
        return None


async def _request(nc: nats.NATS, subject: str, data: bytes, timeout: float) -> bytes | None:
    """The reply's data, or None if nobody answers (no host listens, or it did not answer in time)."""
    try:
        return (await nc.request(subject, data, timeout=timeout)).data
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None


async def _publish_all(nc: nats.NATS, subject: str, payloads: list[bytes]) -> None:
    for payload in payloads:
        await nc.publish(subject, payload)


async def _log_client_error(exc: Exception) -> None:
    log.debug("NATS client (cluster): %r", exc)
