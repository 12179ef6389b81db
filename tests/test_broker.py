"""The broker: durable group-committed sends, wake on commit, leases, dead-letter, reads."""

from __future__ import annotations

import sqlite3

import pytest
import trio
import trio.testing

from hyperhive_core import hookimpl
from hyperhive_core.broker import (
    Broker,
    BrokerError,
    BrokerSection,
    InvalidAddress,
    InvalidBody,
    RecipientDirectory,
    RecipientNotAllowed,
    UnknownRecipient,
)
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError, HyperhiveError
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
        assert await broker.requeue_dead([dead.id, ids[0]]) == 1  # only dead ones move
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
