"""The broker: durable group-committed sends, wake on commit, leases, dead-letter, reads."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive_core import broker as broker_module
from hyperhive_core import hookimpl
from hyperhive_core.broker import (
    Broker,
    BrokerError,
    BrokerSection,
    IdempotencyConflict,
    InvalidAddress,
    InvalidBody,
    InvalidIdempotencyKey,
    RecipientDirectory,
    RecipientNotAllowed,
    UnknownRecipient,
)
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError, HyperhiveError, StoreError
from hyperhive_core.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    yield store
    store.close()


def directory(*names, **allow_lists):
    policy = RecipientDirectory()
    for name in names:
        policy.add(name, may_message=allow_lists.get(name))
    return policy


@pytest.fixture
async def broker(store, nursery):
    broker = Broker(store, BrokerSection(max_attempts=2), policy=directory("alice", "bob"))
    await nursery.start(broker.serve)
    return broker


def rows(store, sql="SELECT id, sender, recipient, body, state, attempts FROM messages ORDER BY id"):
    """What is on disk, seen through a connection of its own."""
    with sqlite3.connect(store.path) as conn:
        return conn.execute(sql).fetchall()


async def test_concurrent_sends_share_transactions_and_each_is_stored_when_it_returns(broker, store):
    returned = {}

    async def send(n):
        message = await broker.send("alice", "bob", f"hello {n}")
        # Committed before send returned: another connection sees it already.
        assert rows(store, f"SELECT body FROM messages WHERE id = {message.id}") == [(f"hello {n}",)]
        returned[n] = message.id

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(send, n)

    assert len(set(returned.values())) == 200
    assert {(row[0], row[3]) for row in rows(store)} == {(id_, f"hello {n}") for n, id_ in returned.items()}
    assert broker.stats.messages == 200
    assert broker.stats.transactions < 200  # group commit: many sends per transaction


async def test_send_works_without_a_running_writer(store):
    broker = Broker(store, policy=directory("bob"))
    message = await broker.send("operator", "bob", "no writer task, still durable")
    assert rows(store) == [(message.id, "operator", "bob", "no writer task, still durable", "queued", 0)]
    assert broker.stats.transactions == 1


async def test_sends_queued_when_the_writer_stops_are_still_stored(store):
    broker = Broker(store, policy=directory("bob"))
    sent = []

    async def send(n):
        sent.append((await broker.send("alice", "bob", f"m{n}")).id)

    async with trio.open_nursery() as senders, trio.open_nursery() as writer:
        await writer.start(broker.serve)
        for n in range(20):
            senders.start_soon(send, n)
        await trio.sleep(0)  # the sends are queued, not yet written
        writer.cancel_scope.cancel()
    assert len(sent) == 20
    assert sorted(sent) == [row[0] for row in rows(store)]


async def test_waiting_recipient_wakes_on_commit_without_polling(store, mock_clock):
    # The clock stands still unless every task sleeps for 5 real seconds; a
    # broker that polled would need the clock to move to notice the message.
    mock_clock.autojump_threshold = 5
    broker = Broker(store, policy=directory("bob"))
    got = []
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)

        async def recipient():
            got.append(await broker.wait_for_messages("bob"))

        nursery.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        sent = await broker.send("operator", "bob", "wake up")
        with trio.fail_after(1):
            while not got:
                await trio.sleep(0)
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()
    [batch] = got
    assert [message.id for message in batch.messages] == [sent.id]
    assert batch.messages[0].state == "leased"
    assert batch.messages[0].attempts == 1


async def test_batch_leased_for_a_waiter_that_gave_up_is_not_lost(broker):
    got = []
    async with trio.open_nursery() as nursery:
        waiter = trio.CancelScope()

        async def recipient():
            with waiter:
                got.append(await broker.wait_for_messages("bob"))

        nursery.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(broker.send, "alice", "bob", "for whoever waits")
        await trio.testing.wait_all_tasks_blocked()  # the writer is committing (and leasing)
        waiter.cancel()
    assert await broker.inbox_depth("bob") == 1
    # Whether the waiter took the batch before its cancel or not, exactly one
    # copy is out, and giving leases back frees it for the next wait.
    later = await broker.lease("bob")
    assert len(got) + (later is not None) == 1
    assert await broker.requeue_leased("bob") == []
    again = await broker.wait_for_messages("bob")
    assert [m.body for m in again.messages] == ["for whoever waits"]
    assert again.messages[0].attempts == 2


async def test_lease_ack_release_and_dead_letter(broker, store):
    ids = [(await broker.send("alice", "bob", f"m{n}")).id for n in range(3)]
    first = await broker.wait_for_messages("bob", limit=2)
    assert first.ids == ids[:2]  # oldest first
    second = await broker.wait_for_messages("bob")
    assert second.ids == ids[2:]
    assert await broker.lease("bob") is None  # everything is leased
    assert await broker.inbox_depth("bob") == 3

    assert await broker.ack(first) == 2
    assert await broker.ack(first) == 0  # acking twice changes nothing
    assert await broker.inbox_depth("bob") == 1

    assert await broker.release(second, error="turn failed") == []
    retry = await broker.wait_for_messages("bob")
    assert retry.ids == ids[2:]
    assert retry.messages[0].attempts == 2
    assert await broker.release(retry, error="failed again") == ids[2:]  # max_attempts = 2

    [dead] = await broker.dead_letters("bob")
    assert (dead.id, dead.state, dead.last_error) == (ids[2], "dead", "failed again")
    assert await broker.lease("bob") is None
    assert await broker.inbox_depth("bob") == 0
    assert [row[4] for row in rows(store)] == ["acked", "acked", "dead"]

    async with trio.open_nursery() as nursery:
        woken = []

        async def recipient():
            woken.append(await broker.wait_for_messages("bob"))

        nursery.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        assert [m.id for m in await broker.requeue_dead([dead.id])] == [dead.id]  # tests/test_dead_letters.py has more
    assert woken[0].ids == [dead.id]
    assert woken[0].messages[0].attempts == 1  # a requeued message gets fresh attempts


async def test_restart_requeues_leases_and_a_stale_batch_cannot_ack(broker, store):
    sent = await broker.send("alice", "bob", "in flight")
    stale = await broker.wait_for_messages("bob")

    restarted = Broker(store, BrokerSection(max_attempts=2), policy=directory("bob"))
    assert await restarted.requeue_leased() == []
    assert rows(store, "SELECT state, attempts FROM messages") == [("queued", 1)]
    assert await restarted.ack(stale) == 0  # the lease it names is gone

    again = await restarted.wait_for_messages("bob")
    assert again.ids == [sent.id]  # same id: the consumer can dedupe
    assert await restarted.requeue_leased("alice") == []  # another recipient's lease is left alone
    assert await restarted.requeue_leased("bob") == [sent.id]  # second attempt: dead-letter


async def test_recent_reads_and_inbox_depth(broker):
    for n in range(5):
        await broker.send("alice", "bob", f"a{n}")
        await broker.send("bob", "alice", f"b{n}")
    await broker.send("operator", "bob", "from the operator")

    recent = await broker.recent_for("bob", limit=3)
    assert [message.body for message in recent] == ["from the operator", "a4", "a3"]
    assert [message.body for message in await broker.recent_from("bob", limit=2)] == ["b4", "b3"]
    assert await broker.inbox_depth("bob") == 6
    assert await broker.inbox_depth("alice") == 5
    assert await broker.recent_for("nobody") == []


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        ("SELECT * FROM messages WHERE recipient = 'b' ORDER BY id DESC LIMIT 50", "messages_by_recipient"),
        ("SELECT * FROM messages WHERE sender = 'b' ORDER BY id DESC LIMIT 50", "messages_by_sender"),
        ("SELECT count(*) FROM messages WHERE state IN ('queued', 'leased') AND recipient = 'b'", "messages_by_state"),
        ("SELECT * FROM messages WHERE sender = 'b' AND idempotency_key = 'k'", "messages_by_idempotency_key"),
    ],
)
def test_reads_use_an_index_not_a_scan(store, sql, index):
    plan = " ".join(row[3] for row in rows(store, f"EXPLAIN QUERY PLAN {sql}"))
    assert index in plan
    assert "SCAN messages" not in plan
    assert "TEMP B-TREE" not in plan


@pytest.mark.parametrize(
    ("recipient", "error", "says"),
    [
        ("", InvalidAddress, "recipient: invalid agent name ''"),
        ("..", InvalidAddress, "recipient: invalid agent name '..'"),
        ("../etc", InvalidAddress, "invalid agent name"),
        ("Bob", InvalidAddress, "lowercase letters"),
        ("b\x00b", InvalidAddress, "invalid agent name"),
        ("b" * 32, InvalidAddress, "1-31 characters"),
        (None, InvalidAddress, "invalid agent name None"),
        ("hive", InvalidAddress, "receives no messages"),
        ("carol", UnknownRecipient, "no agent named 'carol'"),
    ],
)
async def test_bad_recipients_are_refused_and_nothing_is_stored(broker, store, recipient, error, says):
    with pytest.raises(error, match=says.replace("(", r"\(")) as caught:
        await broker.send("alice", recipient, "hi")
    assert isinstance(caught.value, HyperhiveError)
    assert rows(store) == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("x" * (10 * 1024 * 1024), "10485760 bytes, over the 65536-byte limit"),
        (b"x" * (10 * 1024 * 1024), "10485760 bytes, over the 65536-byte limit"),
        ("é" * 40000, "80000 bytes, over the 65536-byte limit"),  # counted in UTF-8 bytes
        (b"caf\xe9", "not valid UTF-8 (bad byte at offset 3)"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("lone \ud800 surrogate", "not valid UTF-8 (a lone surrogate at character 5)"),
        ("nul\x00byte", "contains a NUL character at 3"),
        (b"nul\x00byte", "contains a NUL character"),
        ("", "empty"),
        (42, "must be text, not int"),
    ],
)
async def test_bad_bodies_are_refused_and_nothing_is_stored(broker, store, body, says):
    with pytest.raises(InvalidBody, match=says.replace("(", r"\(").replace(")", r"\)")):
        await broker.send("alice", "bob", body)
    assert rows(store) == []


async def test_valid_utf8_bytes_and_text_at_the_limit_are_accepted(store):
    broker = Broker(store, BrokerSection(max_body_bytes=9), policy=directory("bob"))
    assert (await broker.send("alice", "bob", "caf\u00e9 \u2615".encode())).body == "café ☕"
    assert (await broker.send("alice", "bob", "x" * 9)).body == "x" * 9


async def test_bad_sender_and_kind_are_refused(broker, store):
    with pytest.raises(InvalidAddress, match="sender: invalid agent name '..'"):
        await broker.send("..", "bob", "hi")
    with pytest.raises(BrokerError, match="message kind must be one of event, text, not 'shout'"):
        await broker.send("alice", "bob", "hi", kind="shout")
    assert rows(store) == []


async def test_recipient_policy_knows_who_exists_and_who_may_message_whom(store):
    broker = Broker(store, policy=directory("alice", "bob", "carol", carol=["alice"]))
    with pytest.raises(RecipientNotAllowed, match="'carol' may not message 'bob'; it may message: alice, operator"):
        await broker.send("carol", "bob", "hi")
    await broker.send("carol", "alice", "allowed")
    await broker.send("carol", "operator", "the operator always receives")
    await broker.send("hive", "bob", "the hive may message anyone known", kind="event")
    broker.policy.remove("bob")
    with pytest.raises(UnknownRecipient):
        await broker.send("alice", "bob", "bob is gone")
    assert [row[3] for row in rows(store)] == [
        "allowed",
        "the operator always receives",
        "the hive may message anyone known",
    ]


class MessageWatcher:
    def __init__(self):
        self.seen = []

    @hookimpl
    def on_startup(self, hive):
        hive.broker.policy.add("bob")

    @hookimpl
    async def on_message(self, hive, message):
        await trio.sleep(0)
        # Called after the commit: another connection already sees the message.
        self.seen.append((message.id, message.body, rows(hive.store, "SELECT body FROM messages")))


async def test_hook_on_message(make_pm, make_config):
    watcher = MessageWatcher()
    pm = make_pm(watcher=watcher)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        message = await hive.broker.send("operator", "bob", "hello bob")
        assert watcher.seen == [(message.id, "hello bob", [("hello bob",)])]
        [event] = await hive.events.history("operator")
        assert (event.type, event.data) == (
            "message_sent",
            {"id": message.id, "to": "bob", "kind": "text", "preview": "hello bob"},
        )
        nursery.cancel_scope.cancel()


async def test_failing_on_message_hook_is_reported_and_the_message_stays_sent(make_pm, make_config):
    class Broken:
        @hookimpl
        def on_message(self, hive, message):
            raise RuntimeError("plugin bug")

    pm = make_pm(broken=Broken())
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        message = await hive.broker.send("hive", "operator", "still delivered")
        assert [m.id for m in await hive.broker.recent_for("operator")] == [message.id]
        [error] = await hive.events.history("hive")
        assert error.type == "error"
        assert error.data["message_id"] == message.id
        assert "plugin bug" in error.data["error"]
        nursery.cancel_scope.cancel()


async def test_daemon_start_requeues_leased_messages(make_pm, make_config):
    pm = make_pm(watcher=MessageWatcher())
    config = make_config(pm)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        sent = await hive.broker.send("operator", "bob", "interrupted turn")
        await hive.broker.wait_for_messages("bob")
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        [message] = await hive.broker.recent_for("bob")
        assert (message.id, message.state, message.attempts) == (sent.id, "queued", 1)
        assert message.last_error == "lease abandoned: restarted mid-turn"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("max_attempts", 0, r"\[broker\] max_attempts must be at least 1, not 0"),
        ("max_body_bytes", -1, r"\[broker\] max_body_bytes must be at least 1"),
        ("retention_days", 0.0, r"\[broker\] retention_days must be positive"),
    ],
)
def test_nonsense_broker_settings_are_a_config_error(make_pm, make_config, key, value, says):
    with pytest.raises(ConfigError, match=says):
        make_config(make_pm(), broker={key: value})


# -- idempotent sends ---------------------------------------------------------------


class GatedStore(Store):
    """A store whose writes wait at a gate, so a test can gather sends into one group."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = trio.Event()
        self.gate.set()

    async def write(self, fn, *, durable=True):
        await self.gate.wait()
        return await super().write(fn, durable=durable)


async def test_a_repeated_idempotency_key_returns_the_first_message_and_stores_nothing(store):
    committed = []

    async def on_commit(message):
        committed.append(message.id)

    broker = Broker(store, policy=directory("bob"), on_commit=on_commit)
    first = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    again = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    assert again == first
    # Keys belong to their sender: another sender's same key is another message.
    other = await broker.send("alice", "bob", "deploy v2", idempotency_key="k-1")
    plain = await broker.send("operator", "bob", "deploy v2")
    assert rows(store) == [
        (first.id, "operator", "bob", "deploy v2", "queued", 0),
        (other.id, "alice", "bob", "deploy v2", "queued", 0),
        (plain.id, "operator", "bob", "deploy v2", "queued", 0),
    ]
    assert committed == [first.id, other.id, plain.id]  # hooks hear of a message once
    assert broker.stats.messages == 3

    # Delivered and acked, a repeat still returns it, as it is now.
    batch = await broker.lease("bob")
    await broker.ack(batch)
    acked = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    assert (acked.id, acked.state) == (first.id, "acked")
    assert len(rows(store)) == 3


async def test_copies_in_one_group_commit_store_one_message(store):
    gated = GatedStore(store.path)
    broker = Broker(gated, policy=directory("bob"))
    returned = {}

    async def send(n, key, body):
        try:
            returned[n] = (await broker.send("operator", "bob", body, idempotency_key=key)).id
        except BrokerError as exc:
            returned[n] = exc

    async with trio.open_nursery() as writer:
        await writer.start(broker.serve)
        gated.gate = trio.Event()
        async with trio.open_nursery() as senders:
            senders.start_soon(send, "opener", None, "takes the first group alone")
            await trio.testing.wait_all_tasks_blocked()  # the writer holds it at the gate
            for n in range(8):
                senders.start_soon(send, n, "same", "exactly once")
            await trio.testing.wait_all_tasks_blocked()  # all queued behind the opener
            senders.start_soon(send, "conflict", "same", "another body")
            await trio.testing.wait_all_tasks_blocked()  # queued after them
            gated.gate.set()
        writer.cancel_scope.cancel()
    gated.close()
    assert broker.stats.transactions == 2  # the opener, then every copy together
    [stored] = rows(store, "SELECT id FROM messages WHERE body = 'exactly once'")
    assert {returned[n] for n in range(8)} == {stored[0]}
    assert len(rows(store)) == 2
    assert isinstance(returned["conflict"], IdempotencyConflict)


@pytest.mark.parametrize(
    ("retry", "says"),
    [
        ({"recipient": "alice"}, "with a different recipient"),
        ({"body": "deploy v3"}, "with a different body"),
        ({"body": "deploy v3", "kind": "event"}, "with a different kind and body"),
    ],
)
async def test_a_key_reused_for_another_message_is_refused(broker, store, retry, says):
    first = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    message = {"recipient": "bob", "body": "deploy v2", "kind": "text"} | retry
    with pytest.raises(IdempotencyConflict) as caught:
        await broker.send("operator", idempotency_key="k-1", **message)
    assert str(caught.value) == (
        f"idempotency key 'k-1' was already used by 'operator' for message {first.id} to 'bob' {says}; "
        "nothing was stored. A retry must repeat the message exactly; a new message needs a new key"
    )
    assert len(rows(store)) == 1


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "not ''"),
        ("k" * 129, f"not {'k' * 40!r}… (129 characters)"),
        ("two words", "not 'two words'"),
        ("ünïcode", "not 'ünïcode'"),
        ("a/b", "not 'a/b'"),
        (42, "not 42"),
    ],
)
async def test_bad_idempotency_keys_are_refused(broker, store, key, says):
    with pytest.raises(InvalidIdempotencyKey) as caught:
        await broker.send("operator", "bob", "hi", idempotency_key=key)
    assert str(caught.value) == (
        "idempotency key must be 1-128 characters of letters, digits, '.', '_', ':' and '-', "
        f"{says}; a fresh UUID for each new message works"
    )
    assert rows(store) == []
    longest = "0123456789abcdef-_.:" * 6 + "K" * 8
    assert (await broker.send("operator", "bob", "hi", idempotency_key=longest)).body == "hi"


async def test_a_key_lasts_as_long_as_its_message_is_retained(store):
    broker = Broker(store, BrokerSection(retention_days=1), policy=directory("bob"))
    first = await broker.send("operator", "bob", "once", idempotency_key="k-1")
    await broker.ack(await broker.lease("bob"))
    assert await broker.prune(now=first.created_at + 2 * 86400) == 1
    assert rows(store, "SELECT count(*) FROM messages WHERE idempotency_key IS NOT NULL") == [(0,)]
    again = await broker.send("operator", "bob", "once", idempotency_key="k-1")
    assert again.id > first.id


def test_a_key_is_unique_per_sender_in_the_database_itself(store):
    insert = (
        "INSERT INTO messages (sender, recipient, kind, body, created_at, idempotency_key)"
        " VALUES (?, 'bob', 'text', 'x', 0, 'k')"
    )
    with sqlite3.connect(store.path) as conn:
        conn.execute(insert, ("operator",))
        conn.execute(insert, ("alice",))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(insert, ("operator",))


# -- a refused write ------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size_mb: int) -> Iterator[Path]:
    """A real ``size_mb`` MiB filesystem at ``mountpoint`` (made here), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem, so the database can run out of space."""
    with tmpfs(tmp_path / "disk", 1) as mountpoint:
        yield mountpoint


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it."""
    filler = directory / "filler"
    size = os.statvfs(directory)
    with filler.open("wb", buffering=0) as out:
        for _ in range(2 * size.f_blocks * size.f_frsize // 4096):  # twice the disk in 4 KiB blocks: bounded
            try:
                out.write(b"x" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
    raise AssertionError(f"{directory} never filled up")


def refusals(caplog):
    return [record for record in caplog.records if record.name == "hyperhive_core.broker"]


async def test_a_full_disk_refuses_sends_clearly_loses_nothing_and_recovers(small_disk, caplog):
    store = Store(small_disk / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    broker = Broker(store, policy=directory("bob"))
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        before = await broker.send("operator", "bob", "x" * 1000)
        await store.checkpoint()  # an empty WAL: the next write must grow it
        filler = fill(small_disk)
        caplog.clear()
        for n in range(5):
            with pytest.raises(StoreError) as caught:
                await broker.send("operator", "bob", f"{n}" * 1000, idempotency_key=f"k-{n}")
            assert str(caught.value) == (
                f"message to 'bob' was not stored: the disk holding {small_disk}/hive.db is full; "
                "free space on that filesystem, then send it again"
            )
        [line] = [record.getMessage() for record in refusals(caplog)]
        assert line == (
            f"disk full: 1 message(s) not stored at {small_disk}/hive.db; free space on that filesystem; "
            "senders got an error and nothing was lost"
        )
        assert refusals(caplog)[0].exc_info is None  # one line, no traceback

        # Nothing half-stored: only the message from before, and a sound file.
        assert rows(store, "SELECT id FROM messages") == [(before.id,)]
        assert rows(store, "PRAGMA integrity_check") == [("ok",)]

        filler.unlink()
        caplog.clear()
        after = await broker.send("operator", "bob", "0" * 1000, idempotency_key="k-0")
        assert [record.getMessage() for record in refusals(caplog)] == [
            f"messages are stored again at {small_disk}/hive.db; 4 more were refused since the last report"
        ]
        assert rows(store, "SELECT id, body FROM messages") == [(before.id, "x" * 1000), (after.id, "0" * 1000)]
        nursery.cancel_scope.cancel()
    store.close()


async def test_other_write_errors_show_a_traceback_once_then_one_line(store, caplog, monkeypatch):
    monkeypatch.setattr(broker_module, "REFUSAL_LOG_INTERVAL", 0.0)  # report every refusal
    broker = Broker(store, policy=directory("bob"))
    with sqlite3.connect(store.path) as conn:
        conn.execute("ALTER TABLE messages RENAME TO moved")
    for _ in range(2):
        with pytest.raises(StoreError, match="was not stored: no such table: messages; the daemon's log has details"):
            await broker.send("operator", "bob", "hi")
    first, second = refusals(caplog)
    assert first.getMessage() == (
        f"could not store 1 message(s) at {store.path}; senders got an error and nothing was lost"
    )
    assert "no such table: messages" in str(first.exc_info[1])
    assert second.getMessage() == (
        f"could not store 1 message(s) at {store.path}: OperationalError: no such table: messages; "
        "senders got an error and nothing was lost"
    )
    assert second.exc_info is None
