"""The broker on NATS JetStream (``[broker] backend = "jetstream"``), through nats-py.

Three streams per hive, each with ``[jetstream] replicas`` copies (docs/cluster.md):

- ``HIVE_<name>_INBOX``, a work-queue stream, subjects
  ``hive.<name>.inbox.<recipient>.<sender>.<token>``: messages awaiting delivery.
  Each recipient has a durable pull consumer filtered on its subjects; a message's
  id is its stream sequence. ``<token>`` makes each message's subject its own, so
  the stream's per-subject index lists a recipient's inbox.
- ``HIVE_<name>_ACKED``, subjects ``hive.<name>.acked.<recipient>.<sender>.<id>``: a
  copy of each delivered message, for ``recent_for`` and friends; retention
  purges it.
- ``HIVE_<name>_DEAD``, subjects ``hive.<name>.dead.<recipient>.<sender>.<id>``: dead
  letters, until the operator requeues or drops them.

A lease is messages fetched and not yet acked; ``serve`` keeps them alive with
``in_progress`` every ``heartbeat_seconds``, and a lease whose holder died runs
out after ``ack_wait_seconds`` and is delivered again. ``release`` naks, or, on a
message's last attempt, copies it to dead-letter and acks it away. A delivery
past ``max_attempts`` (the holder died on the last attempt) goes straight to
dead-letter. The idempotency key is the ``Nats-Msg-Id``; a message sent without
one gets its own, so a publish whose answer was lost can be asked again. Sends
that queue meanwhile are stored together as one atomic batch (group commit). Every
read goes to a stream's leader, so it sees every write that returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.aio.msg import Msg
from nats.js import api

from hyperhive_core.broker import (
    Batch,
    BrokerError,
    BrokerSection,
    Message,
    MessageBroker,
    MessageKind,
    MessageState,
    RecipientPolicy,
    _check_ids,
    _conflict,
    _Draft,
    _not_dead,
    _RefusalLog,
    check_address,
)
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.errors import ConfigError, StoreError
from hyperhive_core.names import OPERATOR
from hyperhive_core.natsbridge import AsyncioThread

log = logging.getLogger(__name__)

T = TypeVar("T")

# A waiting pull asks the server for this long, then asks again: one request per
# idle recipient per this many seconds, and the longest a cancelled wait keeps
# its request open to give back whatever still arrives for it.
PULL_SECONDS = 30.0
# A waiting pull hears from the server this often (status 100); three missed, and it is asked again.
PULL_HEARTBEAT_SECONDS = 2.0
# A consumer learns of a stored message a moment after its send returned: ``lease``
# waits this long for a first message before it says there is none.
LEASE_LINGER_SECONDS = 0.25
# The most sends stored as one atomic batch (the server allows 1,000).
GROUP_LIMIT = 256
# One try of a publish waits this long for its answer, then asks again (a node gone mid-request).
TRY_SECONDS = 2.0
# The stream's answer to a message whose idempotency key another publish is storing right now.
DUPLICATE_IN_PROCESS = 10158
# The acked and dead copies dedupe a repeat (a crash between copy and ack) within this window.
COPY_WINDOW_SECONDS = 300.0
# How long closing the connection may take before the loop under it is stopped anyway.
CLOSE_SECONDS = 5.0
# Not a nats-py error, but what a JetStream request can end in when the cluster is away.
UNREACHABLE = (nats.errors.Error, asyncio.TimeoutError, OSError)


class StreamElecting(nats.errors.Error):
    """A stream with no leader yet (its cluster just restarted): no read or write of it would be answered."""


# The cluster may not be ready for a moment: a fresh one electing its meta leader or not yet
# knowing all its nodes, a stream electing its own (a node restarted, or slow on a loaded
# machine). Such a request stored nothing, or is repeated harmlessly, so it is asked again
# (until_answered).
NOT_YET = (
    StreamElecting,
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.TimeoutError,
)
# JetStream's "no suitable peers for placement": too few nodes known or up to place the replicas yet.
NO_SUITABLE_PEERS = 10005


def connect_options(section: JetStreamSection) -> dict[str, Any]:
    """nats-py ``connect`` arguments for credentials and TLS; checks the files now, so a bad one stops the start."""
    options: dict[str, Any] = {}
    path = section.credentials_file
    if path is not None:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"[jetstream] credentials_file {path}: {exc.strerror}; point it at the file") from None
        if mode & 0o077:
            raise ConfigError(
                f"[jetstream] credentials_file {path} can be read by others (mode {mode & 0o777:o}); "
                f"it holds the NATS credentials: run chmod 600 {path}"
            )
        text = path.read_text().strip()
        if "BEGIN NATS USER JWT" in text:
            options["user_credentials"] = str(path)
        elif text.startswith("SU") and "\n" not in text:
            options["nkeys_seed_str"] = text
        elif ":" in text and "\n" not in text:
            options["user"], options["password"] = text.split(":", 1)
        else:
            raise ConfigError(
                f"[jetstream] credentials_file {path} holds neither user:password on one line, "
                "an nkey seed (SU...), nor a NATS .creds file"
            )
    if section.tls_ca or section.tls_cert:
        try:
            context = ssl.create_default_context(cafile=str(section.tls_ca) if section.tls_ca else None)
            if section.tls_cert and section.tls_key:
                context.load_cert_chain(str(section.tls_cert), str(section.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[jetstream] TLS files: {exc}; check tls_ca, tls_cert and tls_key") from None
        options["tls"] = context
    return options


@dataclass(eq=False)
class _Outgoing:
    """A send waiting for its group to be stored."""

    subject: str
    data: bytes
    headers: dict[str, str]
    stored: tuple[int, bool] | None = None
    """Its id, and whether it repeats a message stored before under the same key."""
    error: BaseException | None = None
    turn: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set when it is stored or refused, or when its sender is to carry the next group."""


@dataclass
class _Lease:
    recipient: str
    messages: dict[int, Msg]
    """By message id: what came from the consumer, to ack, nak or keep alive."""


class JetStreamBroker(MessageBroker):
    """The hive's mailboxes on a NATS JetStream cluster. Run ``serve`` to keep leases alive."""

    def __init__(
        self,
        section: JetStreamSection,
        settings: BrokerSection | None = None,
        *,
        policy: RecipientPolicy | None = None,
        on_commit: Callable[[Message], Awaitable[None]] | None = None,
        on_dead: Callable[[list[Message]], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(settings, policy=policy, on_commit=on_commit, on_dead=on_dead)
        self.section = section
        self.options = connect_options(section)
        self.where = ", ".join(section.urls)
        prefix = f"hive.{section.name}"
        self.inbox_subject, self.acked_subject, self.dead_subject = (f"{prefix}.{kind}" for kind in KINDS)
        self._operator_inbox = f"{self.inbox_subject}.{OPERATOR}."
        self.inbox_stream, self.acked_stream, self.dead_stream = (
            f"HIVE_{section.name}_{kind.upper()}" for kind in KINDS
        )
        self._refusals = _RefusalLog(f"the NATS cluster at {self.where}")
        self._bridge: AsyncioThread | None = None
        self._nc: nats.NATS | None = None
        self._js: Any = None
        self._connected: asyncio.Event | None = None
        self._connecting = trio.Lock()
        self._consumers: set[str] = set()
        self._leases: dict[str, _Lease] = {}
        self._stored_for: dict[str, int] = {}
        """The newest message this broker stored for each recipient, by sequence: what a lease must see."""
        self._given_back: dict[int, tuple[int, str | None]] = {}
        self._outbox: list[_Outgoing] = []
        # A token unique to each message (its subject, its own Nats-Msg-Id) and batch: one random
        # draw for the broker and a count, rather than a draw per send.
        token_prefix = secrets.token_hex(8)
        self._tokens = map(f"{token_prefix}{{:x}}".format, itertools.count())
        self.atomic = True
        """Whether the cluster stores a group of sends as one atomic batch (nats-server 2.12 and later)."""
        self._carrying = False
        """A group is on its way; the next waits for it (a second at once only halves both)."""
        """Attempts and last error of messages given back by this process, by id (the stream keeps neither)."""

    # -- the connection ------------------------------------------------------------

    @property
    def _client(self) -> nats.NATS:
        """The connection, on the loop once ``_connect`` made it."""
        assert self._nc is not None
        return self._nc

    async def _call(self, make: Callable[[], Coroutine[Any, Any, T]], **kwargs: Any) -> T:
        """Run ``make()`` on the NATS loop; a cluster that does not answer is a ``StoreError`` naming it."""
        await self._connect()
        assert self._bridge is not None
        try:
            return await self._bridge.run(make, **kwargs)
        except UNREACHABLE as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: BaseException) -> StoreError:
        """A request's error from the loop as a ``StoreError`` naming the cluster."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, nats.js.errors.APIError) and not isinstance(
            exc,
            nats.js.errors.ServiceUnavailableError,  # JetStream is not up (yet)
        ):
            return StoreError(f"the NATS cluster at {self.where} refused the request: {exc.description}")
        return StoreError(self._unreachable(exc))

    def _unreachable(self, exc: BaseException) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            ca = self.section.tls_ca or "not set, so the system's CAs"
            return (
                f"the NATS cluster at {self.where} has a TLS certificate that does not verify "
                f"({exc.verify_message}) against [jetstream] tls_ca ({ca}); "
                "set tls_ca to the CA that signed the servers' certificates"
            )
        if isinstance(exc, ssl.SSLError):
            cert = self.section.tls_cert or "not set"
            return (
                f"the NATS cluster at {self.where} refused the TLS handshake ({exc.reason or exc}); "
                f"if its servers require a client certificate, set [jetstream] tls_cert and tls_key (tls_cert: {cert}) "
                "to one signed by the CA they trust"
            )
        if "authorization violation" in str(exc).lower():
            credentials = self.section.credentials_file or "not set"
            return (
                f"the NATS cluster at {self.where} refused the credentials ({exc}); "
                f"check [jetstream] credentials_file ({credentials}) against the servers' users"
            )
        return (
            f"the NATS cluster at {self.where} did not answer ({type(exc).__name__}: {exc or 'no reply'}); "
            "check that its nodes are up and reachable"
        )

    async def _connect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:  # connected: no lock to take on every call
            return
        async with self._connecting:
            if self._nc is not None and not self._nc.is_closed:
                return
            if self._bridge is None or not self._bridge.running:
                self._bridge = AsyncioThread(f"nats {self.section.name}")
            try:
                await self._bridge.run(self._open)
            except UNREACHABLE as exc:
                raise StoreError(f"cannot connect: {self._unreachable(exc)}") from exc

    async def _open(self) -> None:
        """On the loop: connect (nats-py reconnects from then on, forever), then make sure the streams exist."""
        connected = asyncio.Event()

        async def up() -> None:
            connected.set()
            log.info("connected to the NATS cluster at %s", self.where)

        async def down() -> None:
            connected.clear()
            if self._nc is nc:  # not while closing
                log.warning("lost the NATS cluster at %s; reconnecting", self.where)

        errors: list[Exception] = []

        async def error(exc: Exception) -> None:
            errors.append(exc)
            log.debug("NATS client: %r", exc)

        nc = nats.NATS()
        connecting = nc.connect(
            servers=self.section.urls,
            name=f"hyperhive {self.section.name}",
            connect_timeout=self.section.request_timeout_seconds,  # type: ignore[arg-type]  # seconds, any number
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            dont_randomize=True,  # the first URL is this host's own node; the others are for failover
            reconnected_cb=up,
            disconnected_cb=down,
            error_cb=error,
            **self.options,
        )
        try:
            # Reconnects go on forever once connected; the first connect gives up after the request timeout.
            await asyncio.wait_for(connecting, self.section.request_timeout_seconds)
        except TimeoutError as exc:
            await nc.close()
            # Why the tries failed says more than that time ran out; a refusal more than the reset after it.
            telling = [e for e in errors if not isinstance(e, ConnectionError | nats.errors.StaleConnectionError)]
            if telling or errors:
                raise (telling or errors)[-1] from exc
            raise
        except BaseException:
            await nc.close()
            raise
        connected.set()
        try:
            js = nc.jetstream(timeout=self.section.request_timeout_seconds)
            # Each try of a stream's creation is short: one sent before the meta leader was elected is lost.
            trying = nc.jetstream(timeout=TRY_SECONDS)
            configs = [
                self._stream_config(name, subject, retention, window)
                for name, subject, retention, window in (
                    (self.inbox_stream, self.inbox_subject, "workqueue", self.section.duplicate_window_seconds),
                    (self.acked_stream, self.acked_subject, "limits", COPY_WINDOW_SECONDS),
                    (self.dead_stream, self.dead_subject, "limits", COPY_WINDOW_SECONDS),
                )
            ]
            timeout = self.section.request_timeout_seconds
            streams = [await until_answered(partial(_ensure_stream, trying, config), timeout) for config in configs]
        except BaseException:
            await nc.close()
            raise
        # A server before 2.12 has no atomic batches (and ignores the setting): sends then go one by one.
        self.atomic = bool(streams[0].config.allow_atomic)
        if not self.atomic:
            log.warning(
                "the NATS cluster at %s has no atomic batches (nats-server < 2.12): sends go one by one", self.where
            )
        self._nc, self._js, self._connected = nc, js, connected
        self._consumers.clear()

    def _stream_config(self, name: str, subject: str, retention: str, window: float) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            subjects=[f"{subject}.>"],
            retention=api.RetentionPolicy(retention),
            storage=api.StorageType(self.section.storage),
            num_replicas=self.section.replicas,
            duplicate_window=window,
            # A body at the limit, escaped into the JSON record, with room for the record's other fields.
            max_msg_size=self.settings.max_body_bytes * 6 + 4096,
            allow_direct=False,  # followers may lag: every read goes to the leader
            allow_atomic=True,  # concurrent sends are stored as one batch
        )

    async def _until_connected(self, deadline: float | None = None) -> None:
        """On the loop: wait for a reconnect in progress, as long as a request may take (or until ``deadline``)."""
        assert self._connected is not None
        if self._connected.is_set():  # the usual case, without wait_for's task and timer
            return
        timeout = self.section.request_timeout_seconds if deadline is None else self._try_seconds(deadline)
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.section.request_timeout_seconds

    @staticmethod
    def _try_seconds(deadline: float) -> float:
        """How long one try of a publish may wait for its answer before it is asked again (until ``deadline``)."""
        return max(0.05, min(TRY_SECONDS, deadline - asyncio.get_running_loop().time()))

    async def _consumer(self, recipient: str) -> None:
        """Make sure ``recipient``'s durable pull consumer exists with the current settings."""
        if recipient in self._consumers:
            return
        config = api.ConsumerConfig(
            durable_name=recipient,
            filter_subject=f"{self.inbox_subject}.{recipient}.>",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.section.ack_wait_seconds,
            # One delivery past the last attempt: it is how a lease whose holder died
            # on the last attempt comes back, to go to dead-letter.
            max_deliver=self.settings.max_attempts + 1,
            max_ack_pending=-1,
        )
        await self._call(lambda: self._js.add_consumer(self.inbox_stream, config))
        self._consumers.add(recipient)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every lease alive while its turn runs, until cancelled; then let go of the cluster."""
        await self._connect()
        task_status.started()
        try:
            while True:
                await trio.sleep(self.section.heartbeat_seconds)
                held = [msg for lease in self._leases.values() for msg in lease.messages.values()]
                if held:
                    try:
                        await self._call(partial(self._keep_alive, held))
                    except StoreError as exc:
                        log.warning("could not keep %d leased message(s) alive: %s", len(held), exc)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def _keep_alive(self, held: list[Msg]) -> int:
        return await _each(self._client, held, "+WPI", self.section.request_timeout_seconds)

    async def aclose(self) -> None:
        if self._bridge is None:
            return
        bridge, nc, self._bridge, self._nc = self._bridge, self._nc, None, None
        self._consumers.clear()
        if nc is not None:
            # A connection already broken has nothing left to flush; and nats-py's close can wait
            # for ever on a reconnect that failed, so it gets a bound before the loop is stopped.
            with trio.move_on_after(CLOSE_SECONDS), contextlib.suppress(*UNREACHABLE):
                await bridge.run(nc.close)
        # In a thread: the loop's stop may take seconds, while the daemon's other tasks go on.
        await trio.to_thread.run_sync(bridge.stop)

    # -- sending -------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipient: str,
        body: str | bytes,
        kind: MessageKind = "text",
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        draft = self.draft(sender, recipient, body, kind, idempotency_key, headers=headers)
        record = {"kind": draft.kind, "body": draft.body, "created_at": draft.created_at}
        token = next(self._tokens)
        # Every message has a Nats-Msg-Id, so a publish whose answer was lost can be asked again safely.
        msg_id = f"{draft.sender}:{draft.idempotency_key}" if draft.idempotency_key else f"~{draft.sender}:{token}"
        outgoing = _Outgoing(
            f"{self.inbox_subject}.{draft.recipient}.{draft.sender}.{token}",
            _encode(record),
            {**_nats_headers(draft.headers), "Nats-Msg-Id": msg_id},
        )
        await self._submit(outgoing)
        if outgoing.error is not None:
            if not isinstance(outgoing.error, (StoreError, *UNREACHABLE)):
                raise outgoing.error
            self._refusals.refused(outgoing.error, 1)
            raise StoreError(
                f"message to {draft.recipient!r} was not stored, or not confirmed: {self._failure(outgoing.error)}; "
                "send it again (with the same idempotency key, if it had one)"
            ) from outgoing.error
        assert outgoing.stored is not None
        seq, duplicate = outgoing.stored
        self._refusals.stored()
        if draft.recipient != OPERATOR:  # nobody leases the operator's
            self._stored_for[draft.recipient] = max(seq, self._stored_for.get(draft.recipient, 0))
        if duplicate and draft.idempotency_key:  # without a key of the caller's, a repeat is a try of this send's own
            return await self._repeat(draft, seq)
        self.stats.messages += 1
        message = draft.queued(seq)
        await self.announce(message)
        return message

    async def _submit(self, outgoing: _Outgoing) -> None:
        """Queue ``outgoing`` and wait until it is stored or refused (group commit).

        Sends that queue while a group is on its way go together in the next one:
        one hop to the NATS loop and one atomic batch (one replicated write) for
        all of them. Whoever finds no group on its way carries the next one, and
        hands the job on to the next sender in line when its own is done.
        """
        self._outbox.append(outgoing)
        try:
            while outgoing.stored is None and outgoing.error is None:
                if self._carrying:
                    await outgoing.turn.wait()
                    outgoing.turn = trio.Event()
                    continue
                self._carrying = True
                try:
                    # Others' sends too: the group goes (bounded by the request timeout) even if this one is cancelled.
                    with trio.CancelScope(shield=True):
                        # The senders the last group woke (run in the next round, in any order) queue
                        # their next sends first: the group grows.
                        for _ in range(2):
                            await trio.lowlevel.checkpoint()
                        group, self._outbox = self._outbox[:GROUP_LIMIT], self._outbox[GROUP_LIMIT:]
                        await self._carry(group)
                finally:
                    self._carrying = False
                    if self._outbox:
                        self._outbox[0].turn.set()
        except trio.Cancelled:
            if outgoing in self._outbox:  # not sent: nobody waits for it
                self._outbox.remove(outgoing)
                if self._outbox and not self._carrying:
                    self._outbox[0].turn.set()
            raise

    async def _carry(self, group: list[_Outgoing]) -> None:
        try:
            outcomes = await self._call(lambda: self._store(group))
        except Exception as exc:  # each sender raises it
            outcomes = [exc] * len(group)
        self.stats.transactions += 1
        for outgoing, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                outgoing.error = outcome
            else:
                outgoing.stored = outcome
            outgoing.turn.set()
        if any(outgoing.subject.startswith(self._operator_inbox) for outgoing in group):
            await self._trim_operator()

    async def _trim_operator(self) -> None:
        """Nobody acks the operator's messages: keep the newest ``retention_per_recipient``, as sqlite does,
        so an agent messaging the operator in a loop cannot fill the cluster's disks."""
        keep = {"filter": f"{self._operator_inbox}>", "keep": self.settings.retention_per_recipient}
        try:
            await self._call(lambda: self._api(f"$JS.API.STREAM.PURGE.{self.inbox_stream}", keep))
        except StoreError as exc:  # the sends are stored; the next one to the operator trims again
            log.warning("the operator's older messages were not trimmed: %s", exc)

    async def _store(self, group: list[_Outgoing]) -> list[tuple[int, bool] | BaseException]:
        """On the loop: store a group, as one atomic batch if it is more than one; each one's (id, repeat) or error.

        A batch the stream refuses stored nothing (a key used before refuses the
        whole batch), so its messages then go one by one, each to its own answer.
        """
        if len(group) > 1 and self.atomic:
            try:
                last = await self._publish_batch(group)
            except nats.js.errors.APIError as exc:
                log.debug("atomic batch of %d refused (%s); sending them one by one", len(group), exc.description)
            else:
                return [(last - len(group) + index, False) for index in range(1, len(group) + 1)]
        results = await asyncio.gather(
            *(self._publish_data(outgoing.subject, outgoing.data, outgoing.headers) for outgoing in group),
            return_exceptions=True,
        )
        return [
            (result.seq, bool(result.duplicate)) if isinstance(result, api.PubAck) else result for result in results
        ]

    async def _publish_batch(self, group: list[_Outgoing]) -> int:
        """On the loop: store ``group`` as one atomic batch; return the last message's sequence.

        The messages of an atomic batch are stored together, in order, at
        consecutive sequences, or not at all.
        """
        deadline = self._deadline()
        while True:
            await self._until_connected(deadline)
            nc = self._client
            batch_id = next(self._tokens)
            *first, last = (
                (outgoing, {**outgoing.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)})
                for n, outgoing in enumerate(group, 1)
            )
            for outgoing, headers in first:
                await nc.publish(outgoing.subject, outgoing.data, headers=headers)
            try:
                reply = await nc.request(
                    last[0].subject,
                    last[0].data,
                    timeout=self._try_seconds(deadline),
                    headers={**last[1], "Nats-Batch-Commit": "1"},
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                # No responder: nothing stored (a stream just made, or electing a leader). No answer (a node
                # gone mid-batch): maybe stored, and the repeat of each message's Nats-Msg-Id says so.
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            answer = json.loads(reply.data)
            if "error" in answer:
                raise nats.js.errors.APIError.from_error(answer["error"])
            return answer["seq"]

    async def _publish(self, subject: str, record: dict[str, Any], headers: dict[str, str]) -> api.PubAck:
        return await self._publish_data(subject, _encode(record), headers)

    async def _publish_data(self, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
        """On the loop: store one message (``headers`` has its Nats-Msg-Id); ask again until the request timeout.

        A try with no responder (a stream just made, or electing) stored nothing;
        one with no answer may have, and the message id makes a second try its repeat.
        """
        deadline = self._deadline()
        while True:
            try:
                await self._until_connected(deadline)
                return await self._js.publish(subject, data, headers=headers, timeout=self._try_seconds(deadline))
            except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
            except nats.js.errors.APIError as exc:
                # The same key on its way meanwhile (a retry, another host): once stored, this is its repeat.
                if exc.err_code != DUPLICATE_IN_PROCESS or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _repeat(self, draft: _Draft, message_id: int) -> Message:
        """The message first stored under ``draft``'s key, or why the repeat is refused."""
        earlier = await self._find(message_id)
        if earlier is None:
            raise BrokerError(
                f"idempotency key {draft.idempotency_key!r} was already used by {draft.sender!r} for message "
                f"{message_id}, which is no longer stored (delivered and deleted by retention, or dropped); "
                "nothing was stored. A new message needs a new key"
            )
        if (earlier.recipient, earlier.kind, earlier.body) != (draft.recipient, draft.kind, draft.body):
            raise _conflict(draft, earlier)
        return earlier

    # -- delivery --------------------------------------------------------------------

    async def wait_for_messages(self, recipient: str, *, limit: int | None = None) -> Batch:
        recipient = check_address(recipient, "recipient")
        await self._consumer(recipient)
        limit = limit or self.settings.batch_limit
        while True:  # each pull waits on the server for the first message: no polling
            batch = await self._pull(recipient, limit, PULL_SECONDS)
            if batch is not None:
                return batch

    async def lease(self, recipient: str, *, limit: int | None = None) -> Batch | None:
        recipient = check_address(recipient, "recipient")
        await self._consumer(recipient)
        deadline = trio.current_time() + self.section.request_timeout_seconds
        while True:
            batch = await self._pull(recipient, limit or self.settings.batch_limit, LEASE_LINGER_SECONDS)
            if batch is not None or not await self._unseen(recipient):
                return batch
            if trio.current_time() > deadline:  # gone meanwhile (its consumer made anew): not waited for again
                self._stored_for.pop(recipient, None)
                return None

    async def _unseen(self, recipient: str) -> bool:
        """Whether a message this broker stored for ``recipient`` has not reached its consumer yet: the
        consumer's leader may be a follower of the stream, a moment behind. A send that returned is then
        leased once it is there, not missed."""
        stored = self._stored_for.get(recipient)
        if stored is None:
            return False
        info = await self._call(lambda: self._js.consumer_info(self.inbox_stream, recipient))
        unseen = (info.delivered.stream_seq or 0) < stored and (info.ack_floor.stream_seq or 0) < stored
        if not unseen and self._stored_for.get(recipient) == stored:  # not a newer send's meanwhile
            del self._stored_for[recipient]  # seen: the idle recipient's next empty lease asks nothing more
        return unseen

    async def _pull(self, recipient: str, limit: int, wait: float | None) -> Batch | None:
        msgs = await self._call(lambda: self._fetch(recipient, limit, wait), abandoned=self._give_back_now)
        again = [msg for msg in msgs if msg.metadata.num_delivered > 1]
        if again:
            acked = await self._call(lambda: self._ack_if_copied(recipient, again))
            msgs = [msg for msg in msgs if msg.metadata.sequence.stream not in acked]
        leased: dict[int, Msg] = {}
        overdue: list[tuple[Msg, Message]] = []
        for msg in msgs:
            message = self._from_delivery(recipient, msg)
            if message.attempts > self.settings.max_attempts:
                # Its last attempt's lease ran out: whoever held it stopped mid-turn.
                overdue.append((msg, message))
            else:
                leased[message.id] = msg
        if overdue:
            error = "lease expired: the process holding it stopped mid-turn"
            await self._bury(
                [(msg, _replace(message, attempts=message.attempts - 1, last_error=error)) for msg, message in overdue]
            )
        if not leased:
            return None
        token = secrets.token_hex(8)
        self._leases[token] = _Lease(recipient, leased)
        return Batch(recipient, token, tuple(self._from_delivery(recipient, msg) for msg in leased.values()))

    async def _fetch(self, recipient: str, limit: int, wait: float | None) -> list[Msg]:
        """On the loop: one pull request; with ``wait``, it waits for the first message, then takes what is there."""
        await self._until_connected()
        nc = self._nc
        assert nc is not None
        sub = await nc.subscribe(nc.new_inbox())
        request: dict[str, Any] = {"batch": limit, "no_wait": True}
        # Silence this long means the request is gone (with a consumer leader that died): ask again.
        silence = (wait or 0) + self.section.request_timeout_seconds
        if wait is not None:
            request["expires"] = int(wait * 1e9)
            if wait > 3 * PULL_HEARTBEAT_SECONDS:  # a long wait hears from the server while it is pending
                request["idle_heartbeat"] = int(PULL_HEARTBEAT_SECONDS * 1e9)
                silence = 3 * PULL_HEARTBEAT_SECONDS
        msgs: list[Msg] = []
        try:
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.inbox_stream}.{recipient}",
                json.dumps(request).encode(),
                reply=sub.subject,
            )
            while len(msgs) < limit:
                msg = await sub.next_msg(timeout=silence)
                status = (msg.headers or {}).get(api.Header.STATUS)
                if status is None:
                    msgs.append(msg)
                elif status not in ("100",):  # 404 none, 408 expired, 409 leadership moved: this request is over
                    break
        except asyncio.CancelledError:
            # The caller went away: give back what came, and whatever still comes for this request.
            asyncio.get_running_loop().create_task(self._drain(sub, msgs, (wait or 0) + 1))
            raise
        except nats.errors.TimeoutError:
            # Silence: the request was lost with a consumer leader that went away (a node killed).
            # What came is the batch; the caller asks again.
            log.debug("pull for %s had no answer after %d message(s)", recipient, len(msgs))
        await sub.unsubscribe()
        return msgs

    async def _ack_if_copied(self, recipient: str, msgs: list[Msg]) -> set[int]:
        """On the loop: ack away redelivered messages that were acked already; return their sequences.

        An ack copies the message to the acked stream first. A message delivered
        again with its copy there was acked, and only the consumer's record of it
        was lost: a crash between copy and ack, or a consumer leader that died
        before its followers heard of the ack.
        """

        async def copied(msg: Msg) -> bool:
            subject = self._acked_copy(self._from_delivery(recipient, msg))[0]
            try:
                await self._js.get_msg(self.acked_stream, subject=subject)
            except nats.js.errors.NotFoundError:
                return False
            return True

        found = await asyncio.gather(*(copied(msg) for msg in msgs))
        acked = [msg for msg, hit in zip(msgs, found, strict=True) if hit]
        if acked:
            log.info("%d message(s) to %s delivered again after their ack: acked again", len(acked), recipient)
            await _each(self._client, acked, "+ACK", self.section.request_timeout_seconds)
        return {msg.metadata.sequence.stream for msg in acked}

    async def _drain(self, sub: Any, msgs: list[Msg], seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            while True:
                await self._give_back_now(msgs)
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                msg = await sub.next_msg(timeout=remaining)
                status = (msg.headers or {}).get(api.Header.STATUS)
                if status == "100":  # a heartbeat: the request is still open
                    msgs = []
                    continue
                if status is not None:
                    return
                msgs = [msg]
        except UNREACHABLE:
            pass  # unanswered: its lease runs out and it comes again
        finally:
            with contextlib.suppress(*UNREACHABLE):  # closed meanwhile: the server forgot the request with it
                await sub.unsubscribe()

    async def _give_back_now(self, msgs: list[Msg]) -> None:
        """On the loop: nak fetched messages nobody took."""
        await _each(self._client, msgs, "-NAK", self.section.request_timeout_seconds)

    def _from_delivery(self, recipient: str, msg: Msg) -> Message:
        metadata = msg.metadata
        message = self._decode(msg.subject, metadata.sequence.stream, msg.data, "leased", msg.headers)
        attempts = metadata.num_delivered
        return _replace(
            message, attempts=attempts, last_error=self._given_back.get(message.id, (0, message.last_error))[1]
        )

    async def wait_for_arrival(self, recipient: str, *, after_id: int = 0) -> None:
        recipient = check_address(recipient, "recipient")
        await self._call(lambda: self._arrival(recipient, after_id))

    async def _arrival(self, recipient: str, after_id: int) -> None:
        """On the loop: subscribe to the recipient's subjects first, then look, so nothing slips in between."""
        nc = self._nc
        assert nc is not None
        filter_subject = f"{self.inbox_subject}.{recipient}.>"
        sub = await nc.subscribe(filter_subject)
        try:
            seq = after_id + 1
            while True:
                try:
                    found = await self._js.get_msg(self.inbox_stream, seq=seq, next=True, subject=filter_subject)
                except nats.js.errors.NotFoundError:
                    break
                if json.loads(found.data).get("id", found.seq) > after_id:
                    return
                seq = found.seq + 1  # a requeued copy of an older message
            while True:
                # A publish reaches subscribers as the stream stores it, so it may not be readable yet:
                # the message itself says whether it is newer (a first copy always is).
                arrived = await sub.next_msg(timeout=None)
                if json.loads(arrived.data).get("id", after_id + 1) > after_id:
                    return
        finally:
            await sub.unsubscribe()

    async def ack(self, batch: Batch) -> int:
        lease = self._leases.pop(batch.token, None)
        if lease is None:
            log.warning("ack for %s: %d of %d messages were no longer leased", batch.recipient, 0, len(batch.ids))
            return 0
        copies = [
            (msg, self._acked_copy(message)) for message in batch.messages if (msg := lease.messages.get(message.id))
        ]
        try:
            acked = await self._call(lambda: self._ack_all(copies))
        except StoreError:
            self._leases[batch.token] = lease  # still leased: it can be acked or released again
            raise
        for message in batch.messages:
            self._given_back.pop(message.id, None)
        if acked < len(batch.messages):
            log.warning("ack for %s: %d of %d messages were no longer leased", batch.recipient, acked, len(batch.ids))
        return acked

    def _acked_copy(self, message: Message) -> tuple[str, dict[str, Any]]:
        subject = f"{self.acked_subject}.{message.recipient}.{message.sender}.{message.id}"
        return subject, _record(message)

    async def _ack_all(self, copies: list[tuple[Msg, tuple[str, dict[str, Any]]]]) -> int:
        """On the loop: store the acked copies, then ack the originals away; return how many acks the server took."""
        await asyncio.gather(
            *(
                self._publish(
                    subject,
                    record,
                    {
                        **_nats_headers(_hive_headers(msg.headers)),
                        "Nats-Msg-Id": f"acked:{msg.metadata.sequence.stream}",
                    },
                )
                for msg, (subject, record) in copies
            )
        )
        return await _each(self._client, [msg for msg, _ in copies], "+ACK", self.section.request_timeout_seconds)

    async def release(self, batch: Batch, *, error: str | None = None) -> list[int]:
        lease = self._leases.pop(batch.token, None)
        if lease is None:
            return []
        return await self._give_back(lease, batch.messages, error)

    async def _give_back(self, lease: _Lease, messages: Iterable[Message], error: str | None) -> list[int]:
        naks: list[Msg] = []
        dead: list[tuple[Msg, Message]] = []
        for message in messages:
            msg = lease.messages.get(message.id)
            if msg is None:
                continue
            last_error = error if error is not None else message.last_error
            if message.attempts >= self.settings.max_attempts:
                dead.append((msg, _replace(message, state="dead", last_error=last_error)))
            else:
                naks.append(msg)
                self._given_back[message.id] = (message.attempts, last_error)
        await self._call(lambda: _each(self._client, naks, "-NAK", self.section.request_timeout_seconds))
        return await self._bury(dead)

    async def _bury(self, dead: list[tuple[Msg, Message]]) -> list[int]:
        """Copy messages to dead-letter, ack them away from the inbox, and report them."""
        if not dead:
            return []
        buried = [_replace(message, state="dead") for _, message in dead]

        async def copy_then_ack() -> None:
            await asyncio.gather(
                *(
                    self._publish(
                        f"{self.dead_subject}.{message.recipient}.{message.sender}.{message.id}",
                        _record(message),
                        {**_nats_headers(message.headers), "Nats-Msg-Id": f"dead:{msg.metadata.sequence.stream}"},
                    )
                    for (msg, _), message in zip(dead, buried, strict=True)
                )
            )
            await _each(self._client, [msg for msg, _ in dead], "+ACK", self.section.request_timeout_seconds)

        await self._call(copy_then_ack)
        for message in buried:
            self._given_back.pop(message.id, None)
        await self.report_dead(buried)
        return sorted(message.id for message in buried)

    async def requeue_leased(self, recipient: str | None = None) -> list[int]:
        # Leases of an earlier process are not ours to give back: they run out after ack_wait_seconds.
        dead: list[int] = []
        for token, lease in list(self._leases.items()):
            if recipient is None or lease.recipient == recipient:
                del self._leases[token]
                messages = [self._from_delivery(lease.recipient, msg) for msg in lease.messages.values()]
                dead += await self._give_back(lease, messages, "lease abandoned: restarted mid-turn")
        return sorted(dead)

    # -- dead-letter ---------------------------------------------------------------

    async def dead_letters(self, recipient: str | None = None, *, limit: int = 100) -> list[Message]:
        filter_subject = f"{self.dead_subject}.{recipient or '*'}.*.*"
        return await self._newest(self.dead_stream, filter_subject, limit, "dead")

    async def dead_count(self, recipient: str | None = None) -> int:
        if recipient is None:
            info = await self._call(lambda: self._js.stream_info(self.dead_stream))
            return info.state.messages
        return len(await self._subjects(self.dead_stream, f"{self.dead_subject}.{recipient}.*.*"))

    async def dead_letter(self, message_id: int) -> Message:
        [message_id] = _check_ids([message_id])
        found = await self._find(message_id)
        if found is None or found.state != "dead":
            raise _not_dead("shown", {message_id: found.state if found else None})
        return found

    async def _dead_or_raise(self, ids: list[int], verb: str) -> list[tuple[int, Message]]:
        """Each id's dead letter with its sequence in the dead stream; ``NotDeadLetter`` names any other."""
        found = {message_id: await self._find_with_seq(message_id) for message_id in ids}
        not_dead: dict[int, str | None] = {
            message_id: (hit[1].state if hit else None)
            for message_id, hit in found.items()
            if hit is None or hit[1].state != "dead"
        }
        if not_dead:
            raise _not_dead(verb, not_dead)
        return [hit for hit in found.values() if hit is not None]

    async def requeue_dead(self, ids: Iterable[int]) -> list[Message]:
        dead = await self._dead_or_raise(_check_ids(ids), "requeued")

        async def requeue() -> None:
            for seq, message in dead:
                record = {**_record(message), "id": message.id}
                subject = f"{self.inbox_subject}.{message.recipient}.{message.sender}.r{message.id}"
                await self._publish(
                    subject, record, {**_nats_headers(message.headers), "Nats-Msg-Id": f"requeue:{seq}"}
                )
                await self._js.delete_msg(self.dead_stream, seq)

        await self._call(requeue)
        return sorted((_replace(message, state="queued", attempts=0) for _, message in dead), key=lambda m: m.id)

    async def drop_dead(self, ids: Iterable[int]) -> list[Message]:
        dead = await self._dead_or_raise(_check_ids(ids), "dropped")

        async def drop() -> None:
            for seq, _ in dead:
                await self._js.delete_msg(self.dead_stream, seq)

        await self._call(drop)
        messages = sorted((message for _, message in dead), key=lambda m: m.id)
        log.info("dropped dead letter(s) %s", ", ".join(str(message.id) for message in messages[:20]))
        return messages

    # -- reads -----------------------------------------------------------------------

    async def recent_for(self, recipient: str, limit: int = 50) -> list[Message]:
        return await self._recent(f"{recipient}.*", limit)

    async def recent_from(self, sender: str, limit: int = 50) -> list[Message]:
        return await self._recent(f"*.{sender}", limit)

    async def _recent(self, addresses: str, limit: int) -> list[Message]:
        """Newest first across the three streams; a message caught between two (a crash mid-ack) counts once."""
        found: dict[int, Message] = {}
        streams: tuple[tuple[str, str, MessageState], ...] = (
            (self.inbox_stream, self.inbox_subject, "queued"),
            (self.acked_stream, self.acked_subject, "acked"),
            (self.dead_stream, self.dead_subject, "dead"),
        )
        for stream, subject, state in streams:
            for message in await self._newest(stream, f"{subject}.{addresses}.*", limit, state):
                found[message.id] = message
        return sorted(found.values(), key=lambda message: message.id, reverse=True)[:limit]

    async def inbox_depths(self, recipients: Iterable[str]) -> dict[str, int]:
        # The consumers' counts, not the stream's: an ack is the consumer's at once, the stream's a moment later.
        # Every consumer is asked at once, in one trip to the NATS loop: a listing of 100 agents waits for
        # about one round trip to the cluster, not 100 of them.
        names = list(dict.fromkeys(check_address(recipient, "recipient") for recipient in recipients))
        for name in names:
            await self._consumer(name)

        async def ask() -> list[Any]:
            return await asyncio.gather(*(self._js.consumer_info(self.inbox_stream, name) for name in names))

        infos = await self._call(ask) if names else []
        return {name: info.num_pending + info.num_ack_pending for name, info in zip(names, infos, strict=True)}

    async def _subjects(self, stream: str, filter_subject: str) -> list[str]:
        """Every subject in ``stream`` matching ``filter_subject``: one per message, from the leader."""
        info = await self._call(lambda: self._js.stream_info(stream, subjects_filter=filter_subject))
        return list(info.state.subjects or ())

    async def _newest(self, stream: str, filter_subject: str, limit: int, state: MessageState) -> list[Message]:
        """The newest ``limit`` messages matching ``filter_subject``, newest first.

        The acked and dead streams name each message's id in its subject, so only
        those ``limit`` are read; the inbox's subjects do not, so all of a
        recipient's queued messages are read (one request each, pipelined).
        """
        subjects = await self._subjects(stream, filter_subject)
        if stream != self.inbox_stream:
            subjects = sorted(subjects, key=lambda subject: int(subject.rsplit(".", 1)[1]), reverse=True)[:limit]

        async def read() -> list[Any]:
            found = await asyncio.gather(
                *(self._js.get_msg(stream, subject=s) for s in subjects), return_exceptions=True
            )
            for result in found:
                if isinstance(result, BaseException) and not isinstance(result, nats.js.errors.NotFoundError):
                    raise result
            return [result for result in found if not isinstance(result, BaseException)]  # gone meanwhile: acked

        stored = await self._call(read) if subjects else []
        messages = [self._decode(raw.subject, raw.seq, raw.data, state, raw.headers) for raw in stored]
        return sorted(messages, key=lambda message: message.id, reverse=True)[:limit]

    async def _find(self, message_id: int) -> Message | None:
        hit = await self._find_with_seq(message_id)
        return hit[1] if hit else None

    async def _find_with_seq(self, message_id: int) -> tuple[int, Message] | None:
        """Message ``message_id`` wherever it is now, with its sequence in that stream; ``None`` if nowhere."""

        async def look() -> tuple[MessageState, Any] | None:
            # Copies first: a message is copied to dead or acked before it is acked away from the inbox.
            places: tuple[tuple[str, str, MessageState], ...] = (
                (self.dead_stream, f"{self.dead_subject}.*.*.{message_id}", "dead"),
                (self.acked_stream, f"{self.acked_subject}.*.*.{message_id}", "acked"),
                (self.inbox_stream, f"{self.inbox_subject}.*.*.r{message_id}", "queued"),
            )
            deadline = self._deadline()
            for stream, subject, state in places:
                try:
                    return state, await self._get_msg(stream, deadline, subject=subject)
                except nats.js.errors.NotFoundError:
                    continue
            try:
                raw = await self._get_msg(self.inbox_stream, deadline, seq=message_id)
            except nats.js.errors.NotFoundError:
                return None
            return ("queued", raw) if "id" not in json.loads(raw.data) else None

        hit = await self._call(look)
        if hit is None:
            return None
        state, raw = hit
        return raw.seq, self._decode(raw.subject, raw.seq, raw.data, state, raw.headers)

    async def _get_msg(self, stream: str, deadline: float, **request: Any) -> Any:
        """On the loop: one message from ``stream``'s leader, asked again every ``TRY_SECONDS`` until ``deadline``.

        A stream whose leader went away (a node killed) answers nothing until another
        is elected, seconds later: one request waiting out the whole request timeout
        would miss it. A send whose retry found its own first try stored looks the
        message up here, so this is how long that send waits.
        """
        while True:
            await self._until_connected(deadline)
            try:
                return await self._client.jetstream(timeout=self._try_seconds(deadline)).get_msg(stream, **request)
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.05)

    def _decode(
        self, subject: str, seq: int, data: bytes, state: MessageState, headers: Mapping[str, str] | None = None
    ) -> Message:
        """A stored record as a ``Message``; an inbox message is ``leased`` while this process holds it."""
        _, _, _, recipient, sender, _ = subject.split(".")
        record = json.loads(data)
        message_id = record.get("id", seq)
        attempts, last_error = record.get("attempts", 0), record.get("last_error")
        if state in ("queued", "leased"):
            held = any(message_id in lease.messages for lease in self._leases.values())
            state = "leased" if held or state == "leased" else "queued"
            attempts, last_error = self._given_back.get(message_id, (attempts, last_error))
        return Message(
            message_id,
            sender,
            recipient,
            record["kind"],
            record["body"],
            record["created_at"],
            state,
            attempts,
            last_error,
            _hive_headers(headers),
        )

    # -- health ----------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The node this process talks to, each stream's leader, replicas and size, each recipient's backlog.

        ``ok`` is whether every stream has a leader and every replica is current;
        an unreachable cluster is an ``error``, not an exception, so status still answers.
        """
        report: dict[str, Any] = {"backend": "jetstream", "name": self.section.name, "urls": self.section.urls}
        try:
            return report | await self._call(self._health)
        except StoreError as exc:
            return report | {"ok": False, "error": str(exc)}

    async def _health(self) -> dict[str, Any]:
        """On the loop: what the servers say (no system account needed)."""
        nc = self._nc
        assert nc is not None
        server = nc._server_info  # nats-py keeps the connected node's INFO only here
        streams = []
        for name in (self.inbox_stream, self.acked_stream, self.dead_stream):
            info = await self._js.stream_info(name)
            cluster = info.cluster or api.ClusterInfo()
            streams.append(
                {
                    "name": name,
                    "messages": info.state.messages,
                    "bytes": info.state.bytes,
                    "leader": cluster.leader,
                    "replicas": [
                        {
                            "name": peer.name,
                            "current": bool(peer.current),
                            "offline": bool(peer.offline),
                            "lag": peer.lag or 0,
                            "active_seconds": round((peer.active or 0) / 1e9, 3),  # nats-py passes nanoseconds on
                        }
                        for peer in cluster.replicas or ()
                    ],
                }
            )
        consumers = [
            {
                "name": info.name,
                "pending": info.num_pending,
                "ack_pending": info.num_ack_pending,
                "redelivered": info.num_redelivered,
                "leader": info.cluster.leader if info.cluster else None,
            }
            for info in await self._js.consumers_info(self.inbox_stream)
        ]
        healthy = all(
            stream["leader"] and all(peer["current"] and not peer["offline"] for peer in stream["replicas"])
            for stream in streams
        )
        return {
            "ok": healthy,
            "connected": {
                "url": nc.connected_url.geturl() if nc.connected_url else None,
                "server": server.get("server_name"),
                "version": server.get("version"),
                "cluster": server.get("cluster"),
            },
            "streams": streams,
            "consumers": sorted(consumers, key=lambda consumer: consumer["name"]),
        }

    # -- retention -------------------------------------------------------------------

    async def prune(self, *, now: float | None = None) -> int:
        """Purge acked copies older than ``retention_days`` (counted from the ack), then keep each recipient's newest.

        Only the acked stream is touched: queued, leased and dead messages live elsewhere.
        """
        now = time.time() if now is None else now
        cutoff = datetime.fromtimestamp(now - self.settings.retention_days * 86400, UTC)

        async def purge() -> int:
            api_prefix = "$JS.API.STREAM"
            reply = await self._api(f"{api_prefix}.MSG.GET.{self.acked_stream}", {"start_time": cutoff.isoformat()})
            if "message" in reply:
                first_kept = reply["message"]["seq"]
            else:  # nothing as new as the cutoff: everything before the end goes
                first_kept = (await self._js.stream_info(self.acked_stream)).state.last_seq + 1
            deleted = (await self._api(f"{api_prefix}.PURGE.{self.acked_stream}", {"seq": first_kept}))["purged"]
            for recipient in await self._recipients():
                keep = {
                    "filter": f"{self.acked_subject}.{recipient}.*.*",
                    "keep": self.settings.retention_per_recipient,
                }
                deleted += (await self._api(f"{api_prefix}.PURGE.{self.acked_stream}", keep))["purged"]
            return deleted

        return await self._call(purge)

    async def _recipients(self) -> list[str]:
        """On the loop: every recipient with a consumer, which is every one that ever acked."""
        return [info.name for info in await self._js.consumers_info(self.inbox_stream)]

    async def _api(self, subject: str, request: dict[str, Any]) -> dict[str, Any]:
        reply = await self._client.request(
            subject, json.dumps(request).encode(), timeout=self.section.request_timeout_seconds
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error and error.get("err_code") != 10037:  # 10037: no message found, an answer like any other
            raise nats.js.errors.APIError.from_error(error)
        return answer


KINDS = ("inbox", "acked", "dead")


async def until_answered(make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """On the NATS loop: ``make()``, asked again while the cluster answers :data:`NOT_YET`, for up to ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await make()
        except nats.errors.Error as exc:
            unplaced = getattr(exc, "err_code", None) == NO_SUITABLE_PEERS  # KV errors may have no code
            if not (isinstance(exc, NOT_YET) or unplaced) or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.1)


async def _ensure_stream(js: Any, config: api.StreamConfig) -> api.StreamInfo:
    """Create the stream, or bring an existing one to ``config`` (new replicas, a new window); ready once
    it has a leader (``StreamElecting`` until then)."""
    try:
        info = await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # stream name already in use with a different configuration
            raise
        info = await js.update_stream(config)
    if info.cluster is not None and not info.cluster.leader:
        raise StreamElecting(f"stream {config.name} has no leader yet")
    return info


async def _each(nc: nats.NATS, msgs: list[Msg], verb: str, timeout: float) -> int:
    """Send an ack of kind ``verb`` (``+ACK``, ``-NAK``, ``+WPI``) for each message, waiting for the server to take it.

    Returns how many it took; one it did not answer is left to run out its lease.
    """
    results = await asyncio.gather(
        *(nc.request(msg.reply, verb.encode(), timeout=timeout) for msg in msgs), return_exceptions=True
    )
    failed = [result for result in results if isinstance(result, BaseException)]
    if failed and len(failed) == len(results):
        raise failed[0]
    return len(results) - len(failed)


# One encoder for every record: ``json.dumps`` with an option builds a new one per call, which doubles its cost.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _encode(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode()


# A message's own headers travel as NATS headers under this prefix, apart from NATS's (Nats-Msg-Id ...).
HEADER_PREFIX = "Hive-Header-"


def _nats_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {HEADER_PREFIX + name: value for name, value in headers.items()}


def _hive_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {
        name.removeprefix(HEADER_PREFIX): value
        for name, value in (headers or {}).items()
        if name.startswith(HEADER_PREFIX)
    }


def _record(message: Message) -> dict[str, Any]:
    return {
        "kind": message.kind,
        "body": message.body,
        "created_at": message.created_at,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "id": message.id,
    }


_replace = dataclasses.replace
