"""The message broker: durable sends, wake on commit, at-least-once delivery.

``MessageBroker`` is the interface the hive uses, whatever stores the messages;
``[broker] backend`` picks one from those registered with
``register_broker_backends``: ``sqlite`` (this module's ``SqliteBroker``, the
default) or ``jetstream`` (``hyperhive_core.brokers.jetstream``). Both pass one
conformance suite (tests/test_broker_conformance.py).

The sqlite backend: a message is stored before ``send`` returns (``synchronous=FULL``). Concurrent
sends share one transaction (group commit): a single writer task drains every
pending send, writes them together, then wakes each sender and each waiting
recipient. A recipient's turn leases a batch and acks it when the turn succeeds;
a failed or abandoned lease goes back to the queue, and after ``max_attempts`` to
dead-letter, where the operator can see and requeue it. Ids never change and are
never reused, so a consumer can dedupe by id.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeGuard, get_args

import sqlite_utils
import trio

from hyperhive_core.config import option
from hyperhive_core.errors import ConfigError, DiskFull, HyperhiveError, StoreError
from hyperhive_core.names import OPERATOR, RESERVED, SYSTEM, InvalidName, check_agent_name
from hyperhive_core.store import Store

log = logging.getLogger(__name__)

MessageKind = Literal["text", "event"]
MessageState = Literal["queued", "leased", "acked", "dead"]
MESSAGE_KINDS: frozenset[str] = frozenset(get_args(MessageKind))


def is_message_kind(kind: str) -> TypeGuard[MessageKind]:
    """Whether ``kind`` is one of ``MESSAGE_KINDS``; narrows it for the type checker."""
    return kind in MESSAGE_KINDS


# Sends waiting for the writer; a full queue makes senders wait (backpressure).
SEND_QUEUE_SIZE = 4096
# Retention deletes in chunks, so senders get the writer between chunks.
PRUNE_CHUNK = 5000
# A refused send is logged at once, then at most once per this many seconds.
REFUSAL_LOG_INTERVAL = 30.0
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Message headers: lowercase names, printable ASCII values, a few small ones (docs/broker.md#headers).
HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
MAX_HEADERS = 16
MAX_HEADER_BYTES = 2048


@dataclass
class BrokerSection:
    """The message broker: where messages live, limits, delivery attempts, retention."""

    backend: str = option(
        "sqlite",
        help="Where messages live: sqlite (the hive's database, the default) or jetstream\n"
        "(a NATS cluster, see [jetstream]).",
    )
    max_body_bytes: int = option(65536, help="Largest message body accepted, in bytes of UTF-8.")
    max_attempts: int = option(5, help="Deliveries of a message without an ack before it moves to dead-letter.")
    batch_limit: int = option(50, help="Most messages handed to one turn.")
    retention_days: float = option(7.0, help="Delete acked messages older than this many days.")
    retention_per_recipient: int = option(
        1000, help="Keep at most this many acked messages per recipient; older ones are deleted."
    )
    retention_interval_seconds: float = option(300.0, help="How often retention runs.")

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_attempts", "batch_limit", "retention_per_recipient"):
            if getattr(self, key) < 1:
                raise ConfigError(f"[broker] {key} must be at least 1, not {getattr(self, key)}")
        for key in ("retention_days", "retention_interval_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[broker] {key} must be positive, not {getattr(self, key)}")


# -- errors ---------------------------------------------------------------------


class BrokerError(HyperhiveError):
    """A message was refused; nothing was stored."""


class InvalidAddress(BrokerError):
    """A sender or recipient that is not a valid name."""


class UnknownRecipient(BrokerError):
    """No agent by that name exists."""


class RecipientNotAllowed(BrokerError):
    """The sender may not message that recipient."""


class InvalidIdempotencyKey(BrokerError):
    """An idempotency key that is empty, too long, or has characters outside the allowed set."""


class IdempotencyConflict(BrokerError):
    """The sender already used this idempotency key for a different message."""


class InvalidBody(BrokerError):
    """A body that is empty, too large, or not UTF-8 text."""


class InvalidHeaders(BrokerError):
    """Message headers with a bad name or value, or too many or too large."""


class NotDeadLetter(BrokerError):
    """A dead-letter operation named a message that is not in dead-letter; nothing was changed."""


# -- messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message. ``id`` is stable: use it to dedupe a redelivery."""

    id: int
    sender: str
    recipient: str
    kind: MessageKind
    body: str
    created_at: float
    state: MessageState
    attempts: int
    last_error: str | None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Metadata the sender's side stamped on it (``message_headers`` hooks): never shown to the model."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages leased to one turn; ``ack`` or ``release`` it with its token."""

    recipient: str
    token: str
    messages: tuple[Message, ...]

    @property
    def ids(self) -> list[int]:
        return [message.id for message in self.messages]


class _Draft(NamedTuple):
    sender: str
    recipient: str
    kind: MessageKind
    body: str
    created_at: float
    idempotency_key: str | None
    headers: Mapping[str, str]

    def queued(self, id: int) -> Message:
        """The message this draft became once stored as ``id``, before anyone leased it."""
        return Message(
            id, self.sender, self.recipient, self.kind, self.body, self.created_at, "queued", 0, None, self.headers
        )


@dataclass(eq=False)
class _PendingSend:
    """A validated send waiting for the group-commit writer."""

    draft: _Draft
    done: trio.Event = field(default_factory=trio.Event)
    message: Message | None = None
    repeat: bool = False
    """``message`` was stored earlier under the same idempotency key; nothing new was."""
    error: Exception | None = None


def _take_all(channel: trio.MemoryReceiveChannel[_PendingSend]) -> list[_PendingSend]:
    """Everything already buffered in ``channel``, without waiting."""
    taken = []
    while True:
        try:
            taken.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return taken


# -- checks -----------------------------------------------------------------------


class RecipientPolicy(Protocol):
    """Decides who exists and who may message whom; the broker asks before storing."""

    def check(self, sender: str, recipient: str) -> None:
        """Return if ``sender`` may message ``recipient``.

        :raises UnknownRecipient: no such recipient.
        :raises RecipientNotAllowed: the sender may not message it.
        """


class RecipientDirectory:
    """The default policy: known recipients, and optional allow-lists per sender.

    The operator always receives. An agent receives once added; a sender added
    with ``may_message`` can only message those names (plus the operator).
    """

    def __init__(self) -> None:
        self._allowed: dict[str, frozenset[str] | None] = {}
        self.remote: set[str] = set()
        """Agents placed on the hive's other hosts: they receive too (docs/cluster.md)."""

    def add(self, name: str, *, may_message: Iterable[str] | None = None) -> None:
        self._allowed[check_agent_name(name)] = None if may_message is None else frozenset(may_message)

    def remove(self, name: str) -> None:
        self._allowed.pop(name, None)

    def check(self, sender: str, recipient: str) -> None:
        if recipient != OPERATOR and recipient not in self._allowed and recipient not in self.remote:
            raise UnknownRecipient(
                f"no agent named {recipient!r} can receive messages; check the name against the agent list"
            )
        allowed = self._allowed.get(sender)
        if allowed is not None and recipient != OPERATOR and recipient not in allowed:
            raise RecipientNotAllowed(
                f"{sender!r} may not message {recipient!r}; it may message: "
                f"{', '.join(sorted({OPERATOR, *allowed}))}. Add {recipient!r} to its allowed recipients"
            )


def check_address(name: object, role: str) -> str:
    """Return ``name`` if it can send or receive: an agent name, ``operator`` or ``hive``."""
    if isinstance(name, str) and name in RESERVED:
        return name
    try:
        return check_agent_name(name)
    except InvalidName as exc:
        raise InvalidAddress(f"{role}: {exc}") from None


def check_body(body: str | bytes, limit: int) -> str:
    """Return ``body`` as text if it is non-empty UTF-8 without NUL, at most ``limit`` bytes."""
    if isinstance(body, bytes):
        if len(body) > limit:
            raise _too_large(len(body), limit)
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidBody(f"message body is not valid UTF-8 (bad byte at offset {exc.start}); send text") from None
    elif not isinstance(body, str):
        raise InvalidBody(f"message body must be text, not {type(body).__name__}")
    if len(body) > limit:  # every character is at least one byte: too large without encoding it
        raise _too_large(len(body), limit)
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidBody(
            f"message body is not valid UTF-8 (a lone surrogate at character {exc.start}); send text"
        ) from None
    if size > limit:
        raise _too_large(size, limit)
    if not body:
        raise InvalidBody("message body is empty; write something to send")
    if "\x00" in body:
        raise InvalidBody(f"message body contains a NUL character at {body.index(chr(0))}; remove it and resend")
    return body


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it is 1-128 characters of letters, digits and ``. _ : -`` (a UUID fits)."""
    if isinstance(key, str) and IDEMPOTENCY_KEY.fullmatch(key):
        return key
    shown = repr(key) if not isinstance(key, str) or len(key) <= 40 else f"{key[:40]!r}… ({len(key)} characters)"
    raise InvalidIdempotencyKey(
        f"idempotency key must be 1-128 characters of letters, digits, '.', '_', ':' and '-', not {shown}; "
        "a fresh UUID for each new message works"
    )


def check_headers(headers: object) -> dict[str, str]:
    """Return ``headers`` as a dict if each name is lowercase ``[a-z0-9._-]`` (at most 64, starting with a
    letter or digit), each value printable ASCII (not empty, no space at either end), at most ``MAX_HEADERS``
    of them in ``MAX_HEADER_BYTES``."""
    if not isinstance(headers, Mapping):
        raise InvalidHeaders(f"message headers must be a mapping of names to text, not {type(headers).__name__}")
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise InvalidHeaders(
                f"message header name {name!r} must be 1-64 lowercase letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        if not isinstance(value, str) or not HEADER_VALUE.fullmatch(value):
            raise InvalidHeaders(
                f"message header {name!r} must be printable ASCII text, not empty and with no space at either end, "
                f"not {value!r}"
            )
        size += len(name) + len(value)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        raise InvalidHeaders(
            f"message headers are {len(headers)} header(s) in {size} bytes, over the limit of {MAX_HEADERS} "
            f"in {MAX_HEADER_BYTES} bytes; stamp fewer or shorter ones (message_headers hooks)"
        )
    return dict(headers)


def _too_large(size: int, limit: int) -> InvalidBody:
    return InvalidBody(
        f"message body is {size} bytes, over the {limit}-byte limit ([broker] max_body_bytes); "
        "send less, or write it to a file and send the path"
    )


def _conflict(draft: _Draft, earlier: Message) -> IdempotencyConflict:
    differs = [
        name
        for name, mine, theirs in (
            ("recipient", draft.recipient, earlier.recipient),
            ("kind", draft.kind, earlier.kind),
            ("body", draft.body, earlier.body),
        )
        if mine != theirs
    ]
    return IdempotencyConflict(
        f"idempotency key {draft.idempotency_key!r} was already used by {draft.sender!r} for message {earlier.id} "
        f"to {earlier.recipient!r} with a different {' and '.join(differs)}; nothing was stored. "
        "A retry must repeat the message exactly; a new message needs a new key"
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the database's filesystem (or its size limit) is full."""
    if isinstance(exc, DiskFull):
        return True
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class _RefusalLog:
    """Logs refused writes so a person can act on them, without one line per send.

    The first refusal is logged at once; after that, at most one line per
    ``REFUSAL_LOG_INTERVAL``, counting the refusals held back. A full disk is one
    line saying what to do; any other error shows its traceback the first time
    its type is seen. The first write that works again says so.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._last_report = -math.inf
        self._held = 0
        self._failing = False
        self._traced: set[type[BaseException]] = set()

    def reason(self, exc: BaseException) -> str:
        """Why a send was refused, for its sender."""
        if is_disk_full(exc):
            return f"the disk holding {self.path} is full; free space on that filesystem, then send it again"
        return f"{exc}; the daemon's log has details"

    def refused(self, exc: BaseException, count: int) -> None:
        self._failing = True
        now = time.monotonic()
        if now - self._last_report < REFUSAL_LOG_INTERVAL:
            self._held += count
            return
        held, self._held, self._last_report = self._held, 0, now
        since = f" ({held} more refused since the last report)" if held else ""
        if is_disk_full(exc):
            log.error(
                "disk full: %d message(s) not stored at %s; free space on that filesystem; "
                "senders got an error and nothing was lost%s",
                count,
                self.path,
                since,
            )
        elif type(exc) in self._traced:
            log.error(
                "could not store %d message(s) at %s: %s: %s; senders got an error and nothing was lost%s",
                count,
                self.path,
                type(exc).__name__,
                exc,
                since,
            )
        else:
            self._traced.add(type(exc))
            log.error(
                "could not store %d message(s) at %s; senders got an error and nothing was lost%s",
                count,
                self.path,
                since,
                exc_info=exc,
            )

    def stored(self) -> None:
        if not self._failing:
            return
        since = f"; {self._held} more were refused since the last report" if self._held else ""
        log.warning("messages are stored again at %s%s", self.path, since)
        self._failing, self._held = False, 0


# -- the broker -------------------------------------------------------------------


@dataclass
class BrokerStats:
    """Counters since start; ``transactions`` < ``messages`` shows group commit at work."""

    messages: int = 0
    transactions: int = 0


class MessageBroker(abc.ABC):
    """The hive's mailboxes: what every backend provides (docs/broker.md).

    A backend validates with ``draft`` before it stores anything, awaits
    ``announce`` once a new message is durable, and ``report_dead`` once messages
    moved to dead-letter. Run ``serve`` in a nursery for the life of the hive.

    :param policy: who may message whom; the default is an empty
        ``RecipientDirectory`` (only the operator receives). Replace or fill it as
        agents come and go.
    :param on_commit: awaited with each message after it is durable, in the
        sender's task, before ``send`` returns.
    :param on_dead: awaited with the messages a give-back just moved to
        dead-letter, in the task that gave them back.
    """

    def __init__(
        self,
        settings: BrokerSection | None = None,
        *,
        policy: RecipientPolicy | None = None,
        on_commit: Callable[[Message], Awaitable[None]] | None = None,
        on_dead: Callable[[list[Message]], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings or BrokerSection()
        self.policy: RecipientPolicy = policy if policy is not None else RecipientDirectory()
        self.stats = BrokerStats()
        self._on_commit = on_commit
        self._on_dead = on_dead
        self.stamp_headers: Callable[[str, str, str, str], Mapping[str, str]] | None = None
        """The headers every send gets, from ``(sender, recipient, kind, body)``; the hive sets it to run
        the ``message_headers`` hooks."""

    # -- what backends share -------------------------------------------------------

    def draft(
        self,
        sender: str,
        recipient: str,
        body: str | bytes,
        kind: str,
        idempotency_key: str | None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> _Draft:
        """Check a send: addresses, kind, body, key, policy, headers. Raises ``BrokerError``; stores nothing.

        The headers are the stamped ones (``stamp_headers``) with ``headers`` over them.
        """
        sender = check_address(sender, "sender")
        recipient = check_address(recipient, "recipient")
        if recipient == SYSTEM:
            raise InvalidAddress(f"recipient: {SYSTEM!r} is the hive itself and receives no messages")
        if not is_message_kind(kind):
            raise BrokerError(f"message kind must be one of {', '.join(sorted(MESSAGE_KINDS))}, not {kind!r}")
        text = check_body(body, self.settings.max_body_bytes)
        if idempotency_key is not None:
            idempotency_key = check_idempotency_key(idempotency_key)
        self.policy.check(sender, recipient)
        stamped = self.stamp_headers(sender, recipient, kind, text) if self.stamp_headers is not None else {}
        merged = check_headers({**stamped, **headers} if headers else stamped)
        return _Draft(sender, recipient, kind, text, time.time(), idempotency_key, merged)

    async def announce(self, message: Message) -> None:
        """A new message is durable: run ``on_commit``."""
        if self._on_commit is not None:
            await self._on_commit(message)

    async def report_dead(self, dead: list[Message]) -> None:
        """Messages just moved to dead-letter: one log line, then ``on_dead``."""
        if not dead:
            return
        dead = sorted(dead, key=lambda message: message.id)
        log.warning("moved message(s) %s to dead-letter after %d attempts", _some_ids(dead), self.settings.max_attempts)
        if self._on_dead is not None:
            await self._on_dead(dead)

    async def run_retention(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prune, then compact, every ``retention_interval_seconds``, forever."""
        task_status.started()
        while True:
            deleted = await self.prune()
            await self.compact()
            if deleted:
                log.info("retention deleted %d acked message(s)", deleted)
            await trio.sleep(self.settings.retention_interval_seconds)

    async def compact(self) -> None:  # noqa: B027 - a backend with nothing to compact keeps it
        """Give space back after a prune."""

    async def aclose(self) -> None:  # noqa: B027 - a backend that holds no connection keeps it
        """Let go of connections and threads; a broker used again opens them again."""

    # -- sending and delivery ---------------------------------------------------------

    @abc.abstractmethod
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The backend's own work (group commit, lease heartbeats) until cancelled."""

    @abc.abstractmethod
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
        """Store a message for ``recipient``; return it once it is durable.

        :param idempotency_key: makes a retry safe: sending again with the key
            (by this sender) stores nothing and returns the first message.
        :param headers: metadata kept with the message (``Message.headers``), over
            what ``message_headers`` hooks stamp.
        :raises BrokerError: bad input, or a key already used for a different
            message. Nothing is stored.
        :raises StoreError: the store refused the write or cannot be reached.
        """

    @abc.abstractmethod
    async def wait_for_messages(self, recipient: str, *, limit: int | None = None) -> Batch:
        """Wait until ``recipient`` has queued messages; lease and return them, oldest first. No polling."""

    @abc.abstractmethod
    async def wait_for_arrival(self, recipient: str, *, after_id: int = 0) -> None:
        """Wait until a message to ``recipient`` newer than ``after_id`` awaits delivery; lease nothing."""

    @abc.abstractmethod
    async def lease(self, recipient: str, *, limit: int | None = None) -> Batch | None:
        """Lease ``recipient``'s oldest queued messages now, or return ``None`` if none."""

    @abc.abstractmethod
    async def ack(self, batch: Batch) -> int:
        """Mark ``batch`` delivered, durably; return how many were still leased to it."""

    @abc.abstractmethod
    async def release(self, batch: Batch, *, error: str | None = None) -> list[int]:
        """Give ``batch`` back after a failed turn; return the ids moved to dead-letter."""

    @abc.abstractmethod
    async def requeue_leased(self, recipient: str | None = None) -> list[int]:
        """Give back every lease (of ``recipient``, or all); return the ids moved to dead-letter."""

    # -- dead-letter --------------------------------------------------------------------

    @abc.abstractmethod
    async def dead_letters(self, recipient: str | None = None, *, limit: int = 100) -> list[Message]:
        """Messages in dead-letter, newest first."""

    @abc.abstractmethod
    async def dead_count(self, recipient: str | None = None) -> int:
        """How many messages are in dead-letter (addressed to ``recipient``, if given)."""

    @abc.abstractmethod
    async def dead_letter(self, message_id: int) -> Message:
        """One dead-lettered message. :raises NotDeadLetter: unknown, or not dead."""

    @abc.abstractmethod
    async def requeue_dead(self, ids: Iterable[int]) -> list[Message]:
        """Put dead letters back in the queue with fresh attempts, all or none; return them as requeued."""

    @abc.abstractmethod
    async def drop_dead(self, ids: Iterable[int]) -> list[Message]:
        """Delete dead letters for good, all or none; return them as they were."""

    # -- reads and retention ---------------------------------------------------------------

    @abc.abstractmethod
    async def recent_for(self, recipient: str, limit: int = 50) -> list[Message]:
        """The newest ``limit`` messages to ``recipient``, any state, newest first."""

    @abc.abstractmethod
    async def recent_from(self, sender: str, limit: int = 50) -> list[Message]:
        """The newest ``limit`` messages from ``sender``, any state, newest first."""

    async def inbox_depth(self, recipient: str) -> int:
        """How many messages to ``recipient`` await delivery (queued or leased)."""
        return (await self.inbox_depths([recipient]))[recipient]

    @abc.abstractmethod
    async def inbox_depths(self, recipients: Iterable[str]) -> dict[str, int]:
        """``inbox_depth`` of each of ``recipients`` (0 for one with none), asked in one go: what a listing
        of every agent shows, at the cost of one question to the store rather than one per agent."""

    @abc.abstractmethod
    async def prune(self, *, now: float | None = None) -> int:
        """Delete acked messages past the age limit or the per-recipient cap; return how many."""

    async def health(self) -> dict[str, Any]:
        """Where the messages are kept and how that store is doing, for ``hyperhive status`` (docs/broker.md)."""
        return {"backend": type(self).__name__}

    async def overview(self, recipients: Iterable[str]) -> tuple[dict[str, int], dict[str, Any], int]:
        """``inbox_depths(recipients)``, ``health()`` and ``dead_count()``: what a listing of the whole hive
        shows (``hyperhive status``, the dashboard), asked of the store in one go where it can."""
        return await self.inbox_depths(recipients), await self.health(), await self.dead_count()


class SqliteBroker(MessageBroker):
    """The default backend: messages in the hive's sqlite file. Run ``serve`` for group commit."""

    def __init__(
        self,
        store: Store,
        settings: BrokerSection | None = None,
        *,
        policy: RecipientPolicy | None = None,
        on_commit: Callable[[Message], Awaitable[None]] | None = None,
        on_dead: Callable[[list[Message]], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(settings, policy=policy, on_commit=on_commit, on_dead=on_dead)
        self.store = store
        self._refusals = _RefusalLog(store.path)
        self._queue: trio.MemorySendChannel[_PendingSend] | None = None
        self._arrivals: dict[str, trio.Event] = {}
        # Recipients blocked in wait_for_messages (with their batch limit), and
        # batches the writer leased for them in the same transaction as the send.
        self._waiting: dict[str, int] = {}
        self._ready: dict[str, Batch] = {}

    # -- sending ---------------------------------------------------------------

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
        """Store a message for ``recipient``; return it once it is on disk.

        :param idempotency_key: makes a retry safe: while the first message sent
            with this key (by this sender) is retained, sending again with the key
            stores nothing and returns that message.
        :raises BrokerError: an invalid sender or recipient, an unknown or
            disallowed recipient, a bad body or idempotency key, or a key this
            sender already used for a different message. Nothing is stored.
        :raises StoreError: the database refused the write (a full disk, say).
            Nothing is stored.
        """
        draft = self.draft(sender, recipient, body, kind, idempotency_key, headers=headers)
        pending = _PendingSend(draft)
        if self._queue is not None:
            try:
                await self._queue.send(pending)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the writer stopped meanwhile; commit below
            else:
                await pending.done.wait()
        if pending.message is None and pending.error is None:
            # No writer (not started, or stopped during shutdown): commit alone.
            await self._commit([pending])
        if isinstance(pending.error, BrokerError):
            raise pending.error
        if pending.error is not None:
            raise StoreError(
                f"message to {recipient!r} was not stored: {self._refusals.reason(pending.error)}"
            ) from pending.error
        assert pending.message is not None
        # A repeat was announced when it was first stored (or its hooks died with a crash).
        if not pending.repeat:
            await self.announce(pending.message)
        return pending.message

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the group-commit writer until cancelled."""
        send_channel, receive_channel = trio.open_memory_channel[_PendingSend](SEND_QUEUE_SIZE)
        self._queue = send_channel
        try:
            task_status.started()
            async for first in receive_channel:
                group = [first, *_take_all(receive_channel)]
                await self._commit(group)
        finally:
            self._queue = None
            send_channel.close()
            # Senders still queued commit their own messages (see ``send``).
            for pending in _take_all(receive_channel):
                pending.done.set()
            receive_channel.close()

    async def _commit(self, group: list[_PendingSend]) -> None:
        """Write ``group`` in one durable transaction, then wake senders and recipients.

        A recipient already waiting gets its batch leased in the same transaction,
        so its wake-up needs no second write.
        """
        drafts = [pending.draft for pending in group]
        hand_over = {
            draft.recipient: (secrets.token_hex(8), self._waiting[draft.recipient])
            for draft in drafts
            if draft.recipient in self._waiting and draft.recipient not in self._ready
        }
        try:
            stored, leased = await self.store.write(
                partial(_insert_messages, drafts, hand_over, time.time(), self.settings.retention_per_recipient)
            )
        except trio.Cancelled:
            for pending in group:  # cancelled before the write began: nothing stored
                pending.done.set()
            raise
        except Exception as exc:
            self._refusals.refused(exc, len(group))
            for pending in group:
                pending.error = exc
                pending.done.set()
            return
        self._refusals.stored()
        self.stats.transactions += 1
        for recipient, messages in leased.items():
            if messages:
                self._ready[recipient] = Batch(recipient, hand_over[recipient][0], messages)
        leased_now = {message.id: message for messages in leased.values() for message in messages}
        for pending, outcome in zip(group, stored, strict=True):
            draft = pending.draft
            if isinstance(outcome, int):
                self.stats.messages += 1
                pending.message = leased_now.get(outcome) or draft.queued(outcome)
            elif (outcome.recipient, outcome.kind, outcome.body) == (draft.recipient, draft.kind, draft.body):
                pending.message, pending.repeat = leased_now.get(outcome.id, outcome), True
            else:
                pending.error = _conflict(draft, outcome)
            pending.done.set()
        self._wake(pending.draft.recipient for pending in group if pending.message and not pending.repeat)

    def _wake(self, recipients: Iterable[str]) -> None:
        """Wake whoever waits for these recipients; waiters re-arm a fresh event."""
        for recipient in set(recipients):
            arrived = self._arrivals.pop(recipient, None)
            if arrived is not None:
                arrived.set()

    # -- delivery -----------------------------------------------------------

    async def wait_for_messages(self, recipient: str, *, limit: int | None = None) -> Batch:
        """Wait until ``recipient`` has queued messages; lease and return them.

        Wakes when a send for ``recipient`` commits, without polling.
        """
        recipient = check_address(recipient, "recipient")
        limit = limit or self.settings.batch_limit
        while True:
            # Take the wake-up event before looking, so a commit in between is not missed.
            arrived = self._arrivals.setdefault(recipient, trio.Event())
            batch = await self.lease(recipient, limit=limit)
            if batch is not None:
                return batch
            self._waiting[recipient] = limit
            try:
                await arrived.wait()
            finally:
                self._waiting.pop(recipient, None)

    async def wait_for_arrival(self, recipient: str, *, after_id: int = 0) -> None:
        """Wait until a message to ``recipient`` newer than ``after_id`` awaits delivery; lease nothing.

        Returns at once if one is queued or leased already, so a message committed
        just before the wait began is never missed.
        """
        recipient = check_address(recipient, "recipient")
        sql = "SELECT 1 FROM messages WHERE recipient = ? AND id > ? AND state IN ('queued', 'leased') LIMIT 1"
        while True:
            # Take the wake-up event before looking, so a commit in between is not missed.
            arrived = self._arrivals.setdefault(recipient, trio.Event())
            if await self.store.read(lambda db: db.execute(sql, (recipient, after_id)).fetchone()):
                return
            await arrived.wait()

    async def lease(self, recipient: str, *, limit: int | None = None) -> Batch | None:
        """Lease ``recipient``'s oldest queued messages now, or return ``None`` if none."""
        await trio.lowlevel.checkpoint_if_cancelled()
        ready = self._ready.pop(recipient, None)
        if ready is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()  # never lose a batch to a cancel
            return ready
        token = secrets.token_hex(8)
        lease = partial(_lease, recipient, token, limit or self.settings.batch_limit, time.time())
        # Not fsynced: a lease lost in a crash leaves the message queued, which is
        # what restart makes of every lease anyway.
        messages = await self.store.write(lease, durable=False)
        return Batch(recipient, token, messages) if messages else None

    async def ack(self, batch: Batch) -> int:
        """Mark ``batch`` delivered, durably; return how many were still leased to it.

        Fewer than the batch size means its lease was given up meanwhile (see
        ``requeue_leased``) and those messages will be delivered again.
        """
        acked = await self.store.write(partial(_ack, batch.token, batch.ids, time.time()))
        if acked < len(batch.messages):
            log.warning("ack for %s: %d of %d messages were no longer leased", batch.recipient, acked, len(batch.ids))
        return acked

    async def release(self, batch: Batch, *, error: str | None = None) -> list[int]:
        """Give ``batch`` back after a failed turn; return the ids moved to dead-letter.

        Each message returns to the queue, or to dead-letter once it has been
        leased ``max_attempts`` times.
        """
        ids_json = json.dumps(batch.ids)
        where = "id IN (SELECT value FROM json_each(?)) AND lease_token = ? AND state = 'leased'"
        return await self._unlease(where, (ids_json, batch.token), error)

    async def requeue_leased(self, recipient: str | None = None) -> list[int]:
        """Give back every lease (of ``recipient``, or all); return the ids moved to dead-letter.

        The daemon calls this at start, since no turn survives a restart; a
        harness calls it for its agent before its first wait.
        """
        # A batch leased for a waiter that has not taken it yet is given back too.
        # Forget it first: if it is handed out anyway, its turn's ack finds the
        # lease gone and the messages come again (a duplicate, never a loss).
        if recipient is None:
            self._ready.clear()
            return await self._unlease("state = 'leased'", (), "lease abandoned: restarted mid-turn")
        self._ready.pop(recipient, None)
        where = "state = 'leased' AND recipient = ?"
        return await self._unlease(where, (recipient,), "lease abandoned: restarted mid-turn")

    async def _unlease(self, where: str, params: tuple[Any, ...], error: str | None) -> list[int]:
        changed = await self.store.write(partial(_unlease, where, params, error, self.settings.max_attempts))
        self._wake(message.recipient for message in changed if message.state == "queued")
        dead = sorted((message for message in changed if message.state == "dead"), key=lambda message: message.id)
        await self.report_dead(dead)
        return [message.id for message in dead]

    # -- dead-letter ------------------------------------------------------------

    async def dead_letters(self, recipient: str | None = None, *, limit: int = 100) -> list[Message]:
        """Messages in dead-letter, newest first."""
        if recipient is None:
            return await self._select("state = 'dead'", (), limit)
        return await self._select("state = 'dead' AND recipient = ?", (recipient,), limit)

    async def dead_count(self, recipient: str | None = None) -> int:
        """How many messages are in dead-letter (addressed to ``recipient``, if given)."""
        if recipient is None:
            return await self.store.read(lambda db: db.execute(_DEAD_COUNT).fetchone()[0])
        sql = f"{_DEAD_COUNT} AND recipient = ?"
        return await self.store.read(lambda db: db.execute(sql, (recipient,)).fetchone()[0])

    async def dead_letter(self, message_id: int) -> Message:
        """One dead-lettered message.

        :raises NotDeadLetter: no message has that id, or it is not dead.
        """
        [message_id] = _check_ids([message_id])
        found = await self._select("id = ?", (message_id,), 1)
        if not found or found[0].state != "dead":
            raise _not_dead("shown", {message_id: found[0].state if found else None})
        return found[0]

    async def requeue_dead(self, ids: Iterable[int]) -> list[Message]:
        """Put dead letters back in the queue with fresh attempts; return them as requeued.

        All or nothing: if any id is not a dead letter, nothing moves.

        :raises NotDeadLetter: an id that is unknown or not dead, naming each.
        """
        messages = await self.store.write(partial(_requeue_dead, _check_ids(ids)))
        self._wake(message.recipient for message in messages)
        return messages

    async def drop_dead(self, ids: Iterable[int]) -> list[Message]:
        """Delete dead letters for good; return them as they were.

        All or nothing: if any id is not a dead letter, nothing is deleted.

        :raises NotDeadLetter: an id that is unknown or not dead, naming each.
        """
        messages = await self.store.write(partial(_drop_dead, _check_ids(ids)))
        log.info("dropped dead letter(s) %s", _some_ids(messages))
        return messages

    # -- reads ----------------------------------------------------------------

    async def recent_for(self, recipient: str, limit: int = 50) -> list[Message]:
        """The newest ``limit`` messages to ``recipient``, any state, newest first."""
        return await self._select("recipient = ?", (recipient,), limit)

    async def recent_from(self, sender: str, limit: int = 50) -> list[Message]:
        """The newest ``limit`` messages from ``sender``, any state, newest first."""
        return await self._select("sender = ?", (sender,), limit)

    async def inbox_depths(self, recipients: Iterable[str]) -> dict[str, int]:
        """One query, each recipient a lookup in the ``messages_by_state`` index: the acked messages,
        however many, are never read."""
        return await self.store.read(partial(_inbox_depths, list(dict.fromkeys(recipients))))

    async def health(self) -> dict[str, Any]:
        """The database file, its write-ahead log's size, and how many messages are in each state but acked."""
        return self._health(dict(await self.store.read(lambda db: db.execute(_STATE_COUNTS).fetchall())))

    async def overview(self, recipients: Iterable[str]) -> tuple[dict[str, int], dict[str, Any], int]:
        """One read on the store's thread: the inbox depths, and the counts by state, dead letters among them."""
        names = list(dict.fromkeys(recipients))

        def read(db: sqlite_utils.Database) -> tuple[dict[str, int], dict[str, int]]:
            return _inbox_depths(names, db), dict(db.execute(_STATE_COUNTS).fetchall())

        depths, counts = await self.store.read(read)
        health = self._health(counts)
        return depths, health, health["dead"]

    def _health(self, counts: dict[str, int]) -> dict[str, Any]:
        wal = self.store.path.with_name(self.store.path.name + "-wal")
        return {
            "backend": "sqlite",
            "file": str(self.store.path),
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            **{state: counts.get(state, 0) for state in ("queued", "leased", "dead")},
        }

    async def _select(self, where: str, params: tuple[Any, ...], limit: int) -> list[Message]:
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY id DESC LIMIT ?"  # noqa: S608 - fixed fragments
        return await self.store.read(lambda db: [_message(row) for row in db.execute(sql, (*params, limit))])

    # -- retention ------------------------------------------------------------

    async def prune(self, *, now: float | None = None) -> int:
        """Delete acked messages past the age limit or the per-recipient cap; return how many.

        Never touches a message that is queued, leased or dead.
        """
        now = time.time() if now is None else now
        cutoff = now - self.settings.retention_days * 86400
        deleted = await self._delete_in_chunks(
            "SELECT id FROM messages WHERE state = 'acked' AND created_at < ? LIMIT ?", (cutoff,)
        )
        keep = self.settings.retention_per_recipient
        for recipient in await self.store.read(_recipients):
            deleted += await self._delete_in_chunks(
                "SELECT id FROM messages WHERE state = 'acked' AND recipient = ? AND id <= ("
                "  SELECT id FROM messages WHERE state = 'acked' AND recipient = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
                ") LIMIT ?",
                (recipient, recipient, keep),
            )
        return deleted

    async def _delete_in_chunks(self, select: str, params: tuple[Any, ...]) -> int:
        deleted = 0
        sql = f"DELETE FROM messages WHERE id IN ({select})"  # noqa: S608 - fixed fragments
        while True:
            count = await self.store.write(lambda db: db.execute(sql, (*params, PRUNE_CHUNK)).rowcount)
            deleted += count
            if count < PRUNE_CHUNK:
                return deleted

    async def compact(self) -> None:
        """Fold the WAL into the database and truncate it."""
        await self.store.checkpoint()


# The default backend, under the name scripts and tests have always used.
Broker = SqliteBroker


# -- SQL, run on the store's threads ---------------------------------------------

_COLUMNS = "id, sender, recipient, kind, body, created_at, state, attempts, last_error, headers"


def _message(row: tuple[Any, ...]) -> Message:
    """A row of ``_COLUMNS`` as a ``Message``; headers are stored as JSON, NULL for none."""
    id_, sender, recipient, kind, body, created_at, state, attempts, last_error, headers = row
    return Message(
        id_,
        sender,
        recipient,
        kind,
        body,
        created_at,
        state,
        attempts,
        last_error,
        json.loads(headers) if headers else {},
    )


def m001_messages(db: sqlite_utils.Database) -> None:
    """The broker's table. AUTOINCREMENT so an id is never reused after retention."""
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('text', 'event')),
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased', 'acked', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_token TEXT,
            leased_at REAL,
            acked_at REAL,
            last_error TEXT
        )
        """
    )
    db.execute("CREATE INDEX messages_by_recipient ON messages (recipient, id)")
    db.execute("CREATE INDEX messages_by_sender ON messages (sender, id)")
    db.execute("CREATE INDEX messages_by_state ON messages (state, recipient, id)")
    db.execute("CREATE INDEX messages_acked_age ON messages (created_at) WHERE state = 'acked'")


def m007_message_idempotency_keys(db: sqlite_utils.Database) -> None:
    """A sender's idempotency key, unique per sender; it goes when retention deletes its message."""
    db.execute("ALTER TABLE messages ADD COLUMN idempotency_key TEXT")
    db.execute(
        "CREATE UNIQUE INDEX messages_by_idempotency_key ON messages (sender, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )


def m010_message_headers(db: sqlite_utils.Database) -> None:
    """Each message's headers as a JSON object; NULL when it has none."""
    db.execute("ALTER TABLE messages ADD COLUMN headers TEXT")


_INSERT = (
    "INSERT INTO messages (sender, recipient, kind, body, created_at, idempotency_key, headers) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_BY_KEY = f"SELECT {_COLUMNS} FROM messages WHERE sender = ? AND idempotency_key = ?"  # noqa: S608 - fixed fragments


def _insert_messages(
    drafts: list[_Draft],
    hand_over: dict[str, tuple[str, int]],
    now: float,
    operator_keep: int,
    db: sqlite_utils.Database,
) -> tuple[list[int | Message], dict[str, tuple[Message, ...]]]:
    """Insert ``drafts``; lease for each waiting recipient in ``hand_over`` (token, limit).

    Each draft gives its new id, or, when its sender already used its idempotency
    key, the message stored under that key and nothing new. Drafts are written in
    order, so a repeat later in the same group finds the earlier one. Nobody acks
    the operator's messages, so only the newest ``operator_keep`` of them stay: an
    agent sending to the operator in a loop cannot fill the disk.
    """
    stored: list[int | Message] = []
    for draft in drafts:
        if draft.idempotency_key is not None:
            row = db.execute(_BY_KEY, (draft.sender, draft.idempotency_key)).fetchone()
            if row is not None:
                stored.append(_message(row))
                continue
        rowid = db.conn.execute(_INSERT, (*draft[:-1], json.dumps(draft.headers) if draft.headers else None)).lastrowid
        assert rowid is not None  # an INSERT always sets it
        stored.append(rowid)
    if any(draft.recipient == OPERATOR for draft in drafts):
        db.execute(_OPERATOR_OVERFLOW, (OPERATOR, OPERATOR, operator_keep))
    leased = {recipient: _lease(recipient, token, limit, now, db) for recipient, (token, limit) in hand_over.items()}
    return stored, leased


# Every message of the operator's but the newest N (the third parameter).
_OPERATOR_OVERFLOW = (
    "DELETE FROM messages WHERE recipient = ? AND id <= ("
    "  SELECT id FROM messages WHERE recipient = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
    ")"
)


def _inbox_depths(names: list[str], db: sqlite_utils.Database) -> dict[str, int]:
    counted = dict(db.execute(_INBOX_DEPTHS, (json.dumps(names),)).fetchall())
    return {name: counted.get(name, 0) for name in names}


def _lease(recipient: str, token: str, limit: int, now: float, db: sqlite_utils.Database) -> tuple[Message, ...]:
    rows = db.execute(
        f"""
        UPDATE messages SET state = 'leased', lease_token = ?, leased_at = ?, attempts = attempts + 1
        WHERE id IN (
            SELECT id FROM messages WHERE state = 'queued' AND recipient = ? ORDER BY id LIMIT ?
        )
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - fixed fragments
        (token, now, recipient, limit),
    ).fetchall()
    return tuple(sorted((_message(row) for row in rows), key=lambda message: message.id))


def _ack(token: str, ids: list[int], now: float, db: sqlite_utils.Database) -> int:
    return db.execute(
        """
        UPDATE messages SET state = 'acked', acked_at = ?, lease_token = NULL
        WHERE id IN (SELECT value FROM json_each(?)) AND lease_token = ? AND state = 'leased'
        """,
        (now, json.dumps(ids), token),
    ).rowcount


def _unlease(
    where: str, params: tuple[Any, ...], error: str | None, max_attempts: int, db: sqlite_utils.Database
) -> list[Message]:
    rows = db.execute(
        f"""
        UPDATE messages
        SET state = CASE WHEN attempts >= ? THEN 'dead' ELSE 'queued' END,
            last_error = coalesce(?, last_error), lease_token = NULL, leased_at = NULL
        WHERE {where}
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - fixed fragments
        (max_attempts, error, *params),
    ).fetchall()
    return [_message(row) for row in rows]


_DEAD_COUNT = "SELECT count(*) FROM messages WHERE state = 'dead'"
# States named, not "!= 'acked'": a search of the state index, where the inequality scans every acked message.
_STATE_COUNTS = "SELECT state, count(*) FROM messages WHERE state IN ('queued', 'leased', 'dead') GROUP BY state"
_INBOX_DEPTHS = (
    "SELECT recipient, count(*) FROM messages WHERE state IN ('queued', 'leased') "
    "AND recipient IN (SELECT value FROM json_each(?)) GROUP BY recipient"
)
_STATES = "SELECT id, state FROM messages WHERE id IN (SELECT value FROM json_each(?))"

# Why a message is not a dead letter, by its state (None: no such message).
_NOT_DEAD_BECAUSE = {
    None: "does not exist (never sent, or deleted by retention or a drop)",
    "queued": "is queued, waiting for delivery",
    "leased": "is in a turn right now",
    "acked": "was delivered (acked)",
}


def _some_ids(messages: list[Message], shown: int = 20) -> str:
    """The messages' ids for a log line: the first ``shown``, then how many more."""
    text = ", ".join(str(message.id) for message in messages[:shown])
    return text + (f" and {len(messages) - shown} more" if len(messages) > shown else "")


def _check_ids(ids: Iterable[object]) -> list[int]:
    """``ids`` as a list of distinct message ids, in the order given."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise BrokerError(f"give message ids as a list of whole numbers, not {ids!r}")
    checked = []
    for message_id in ids:
        if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 1:
            raise BrokerError(f"a message id is a whole number from 1 up, not {message_id!r}")
        if message_id not in checked:
            checked.append(message_id)
    if not checked:
        raise BrokerError("give at least one message id; `hyperhive dead list` shows the dead letters")
    return checked


def _not_dead(verb: str, states: dict[int, str | None]) -> NotDeadLetter:
    reasons = "; ".join(f"message {message_id} {_NOT_DEAD_BECAUSE[state]}" for message_id, state in states.items())
    return NotDeadLetter(
        f"not a dead letter, so nothing was {verb}: {reasons}. `hyperhive dead list` shows the dead letters"
    )


def _dead_or_raise(ids: list[int], verb: str, db: sqlite_utils.Database) -> str:
    """The ids as JSON, once each is checked to be a dead letter (inside the caller's transaction)."""
    ids_json = json.dumps(ids)
    states = dict(db.execute(_STATES, (ids_json,)))
    not_dead = {message_id: states.get(message_id) for message_id in ids if states.get(message_id) != "dead"}
    if not_dead:
        raise _not_dead(verb, not_dead)
    return ids_json


def _requeue_dead(ids: list[int], db: sqlite_utils.Database) -> list[Message]:
    rows = db.execute(
        f"""
        UPDATE messages SET state = 'queued', attempts = 0
        WHERE id IN (SELECT value FROM json_each(?)) AND state = 'dead'
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - fixed fragments
        (_dead_or_raise(ids, "requeued", db),),
    ).fetchall()
    return sorted((_message(row) for row in rows), key=lambda message: message.id)


def _drop_dead(ids: list[int], db: sqlite_utils.Database) -> list[Message]:
    rows = db.execute(
        f"""
        DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND state = 'dead'
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - fixed fragments
        (_dead_or_raise(ids, "dropped", db),),
    ).fetchall()
    return sorted((_message(row) for row in rows), key=lambda message: message.id)


def _recipients(db: sqlite_utils.Database) -> list[str]:
    """Every distinct recipient, hopping through the index instead of scanning it."""
    rows = db.execute(
        """
        WITH RECURSIVE r(name) AS (
            SELECT min(recipient) FROM messages
            UNION ALL
            SELECT (SELECT min(recipient) FROM messages WHERE recipient > r.name) FROM r WHERE r.name IS NOT NULL
        )
        SELECT name FROM r WHERE name IS NOT NULL
        """
    ).fetchall()
    return [name for (name,) in rows]
