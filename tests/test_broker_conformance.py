"""One suite, every broker backend: sqlite, and JetStream on a real three-node cluster with R3 streams.

Run as a script, this file is a process that leases a message and holds it until
killed (``holder BACKEND TARGET``), for the kill -9 test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive_core.broker import (
    BrokerError,
    BrokerSection,
    IdempotencyConflict,
    InvalidAddress,
    InvalidBody,
    InvalidIdempotencyKey,
    MessageBroker,
    NotDeadLetter,
    RecipientDirectory,
    SqliteBroker,
    UnknownRecipient,
)
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.store import Store

BACKENDS = ["sqlite", "jetstream"]
# Short leases, so a killed holder's lease runs out within the test; heartbeats keep live ones.
# A fresh cluster makes its streams in a fraction of a second, but on a loaded machine it can take seconds.
JETSTREAM_TIMING = {"ack_wait_seconds": 2.0, "heartbeat_seconds": 0.5, "request_timeout_seconds": 15.0}


def directory(*names):
    policy = RecipientDirectory()
    for name in names:
        policy.add(name)
    return policy


def open_backend(backend, target, *recipients, settings=None, **callbacks):
    """A broker of ``backend`` on ``target`` (a database path, or the cluster's URLs)."""
    policy = directory(*recipients)
    settings = settings or BrokerSection()
    if backend == "sqlite":
        store = Store(Path(target))
        store.migrate({"core": CORE_MIGRATIONS})
        return SqliteBroker(store, settings, policy=policy, **callbacks)
    from hyperhive_core.brokers.jetstream import JetStreamBroker

    return JetStreamBroker(JetStreamSection(urls=target, **JETSTREAM_TIMING), settings, policy=policy, **callbacks)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def target(backend, tmp_path, request):
    if backend == "sqlite":
        return str(tmp_path / "hive.db")
    return request.getfixturevalue("nats_cluster").urls


@pytest.fixture
async def open_broker(backend, target, nursery):
    """``await open_broker(*recipients, **broker_settings)``: a serving broker of this test's backend."""
    opened = []

    async def make(*recipients, **kwargs):
        settings = BrokerSection(**{key: kwargs.pop(key) for key in list(kwargs) if key in BROKER_KEYS})
        broker = open_backend(backend, target, *recipients, settings=settings, **kwargs)
        opened.append(broker)
        await nursery.start(broker.serve)
        return broker

    yield make
    nursery.cancel_scope.cancel()
    for broker in opened:
        with trio.CancelScope(shield=True):
            await broker.aclose()
        if isinstance(broker, SqliteBroker):
            broker.store.close()


BROKER_KEYS = {"max_attempts", "batch_limit", "retention_days", "retention_per_recipient", "max_body_bytes"}


async def drain(broker, recipient, limit=None):
    """Lease and ack everything queued for ``recipient``; the ids, in delivery order."""
    ids = []
    for _ in range(1000):
        batch = await broker.lease(recipient, limit=limit)
        if batch is None:
            return ids
        ids += batch.ids
        assert await broker.ack(batch) == len(batch.ids)
    raise AssertionError("never drained")


# -- at-least-once, in order ----------------------------------------------------------


async def test_every_send_that_returned_is_delivered_once_in_order(open_broker):
    broker = await open_broker("bob", "carol")
    sent = {"bob": [], "carol": []}

    async def sender(name):
        for n in range(15):
            recipient = "bob" if n % 3 else "carol"
            message = await broker.send(name, recipient, f"{name} {n}")
            sent[recipient].append(message)

    async with trio.open_nursery() as senders:
        for name in ("alice", "dave", "operator"):
            senders.start_soon(sender, name)
    for recipient, messages in sent.items():
        assert len({message.id for message in messages}) == len(messages)
        assert await broker.inbox_depth(recipient) == len(messages)
        delivered = await drain(broker, recipient, limit=7)
        # Oldest first: each recipient's messages in the order their sends returned (ids only grow).
        assert delivered == sorted(message.id for message in messages)
        assert await broker.inbox_depth(recipient) == 0
        recent = await broker.recent_for(recipient, limit=100)
        assert [m.id for m in recent] == sorted(delivered, reverse=True)
        assert {m.state for m in recent} == {"acked"}
        assert {(m.id, m.body) for m in recent} == {(m.id, m.body) for m in messages}
    assert [m.body for m in await broker.recent_from("dave", limit=2)] == ["dave 14", "dave 13"]


async def test_ack_release_and_dead_letter_after_max_attempts(open_broker):
    died = []

    async def on_dead(messages):
        died.append([(m.id, m.state, m.attempts, m.last_error) for m in messages])

    broker = await open_broker("bob", max_attempts=2, on_dead=on_dead)
    ids = [(await broker.send("alice", "bob", f"m{n}")).id for n in range(3)]
    first = await broker.wait_for_messages("bob", limit=2)
    assert first.ids == ids[:2]
    assert [(m.state, m.attempts) for m in first.messages] == [("leased", 1)] * 2
    second = await broker.lease("bob")
    assert second.ids == ids[2:]
    assert await broker.lease("bob") is None  # everything is leased
    assert await broker.inbox_depth("bob") == 3
    assert {m.id: m.state for m in await broker.recent_for("bob")} == dict.fromkeys(reversed(ids), "leased")

    assert await broker.ack(first) == 2
    assert await broker.ack(first) == 0  # acking twice changes nothing
    assert await broker.inbox_depth("bob") == 1

    assert await broker.release(second, error="turn failed") == []
    retry = await broker.wait_for_messages("bob")
    assert retry.ids == ids[2:]  # same id: the consumer dedupes by it
    assert (retry.messages[0].attempts, retry.messages[0].last_error) == (2, "turn failed")
    assert await broker.release(retry, error="failed again") == ids[2:]
    assert died == [[(ids[2], "dead", 2, "failed again")]]

    [dead] = await broker.dead_letters("bob")
    assert (dead.id, dead.state, dead.body, dead.last_error) == (ids[2], "dead", "m2", "failed again")
    assert await broker.dead_count() == 1
    assert await broker.dead_count("bob") == 1
    assert await broker.dead_count("alice") == 0
    assert await broker.lease("bob") is None
    assert await broker.inbox_depth("bob") == 0
    assert [m.state for m in await broker.recent_for("bob")] == ["dead", "acked", "acked"]


async def test_inbox_depths_of_many_recipients_at_once_match_each_ones_depth(open_broker):
    broker = await open_broker("bob", "carol", "dave", "erin", max_attempts=1)
    for n in range(4):
        await broker.send("alice", "bob", f"bob {n}")  # queued
    for n in range(3):
        await broker.send("alice", "carol", f"carol {n}")
    leased = await broker.lease("carol", limit=2)  # two leased, one queued
    for n in range(2):
        await broker.send("alice", "dave", f"dave {n}")
    assert await broker.ack(await broker.lease("dave", limit=1)) == 1  # one acked, one queued
    await broker.send("alice", "erin", "erin")
    assert await broker.release(await broker.lease("erin"), error="failed") != []  # dead
    names = ["bob", "carol", "dave", "erin", "operator", "bob"]  # one with no mail; a name twice counts once

    depths = await broker.inbox_depths(names)

    assert depths == {"bob": 4, "carol": 3, "dave": 1, "erin": 0, "operator": 0}
    assert depths == {name: await broker.inbox_depth(name) for name in names}
    assert await broker.inbox_depths([]) == {}
    await broker.ack(leased)
    assert await broker.inbox_depths(["carol"]) == {"carol": 1}


async def test_dead_letters_requeue_and_drop_all_or_nothing(open_broker):
    broker = await open_broker("bob", max_attempts=1)
    delivered = await broker.send("operator", "bob", "fine")
    await broker.ack(await broker.lease("bob"))
    doomed = [(await broker.send("operator", "bob", f"doomed {n}")).id for n in range(2)]
    assert await broker.release(await broker.lease("bob"), error="boom") == doomed
    queued = await broker.send("operator", "bob", "still waiting")

    assert (await broker.dead_letter(doomed[0])).body == "doomed 0"
    with pytest.raises(NotDeadLetter) as refused:
        await broker.requeue_dead([doomed[0], delivered.id, queued.id, 9999])
    assert str(refused.value) == (
        f"not a dead letter, so nothing was requeued: message {delivered.id} was delivered (acked); "
        f"message {queued.id} is queued, waiting for delivery; message 9999 does not exist (never sent, "
        "or deleted by retention or a drop). `hyperhive dead list` shows the dead letters"
    )
    with pytest.raises(NotDeadLetter, match=f"nothing was dropped: message {queued.id} is queued"):
        await broker.drop_dead([doomed[1], queued.id])
    with pytest.raises(NotDeadLetter, match="nothing was shown: message 9999 does not exist"):
        await broker.dead_letter(9999)
    with pytest.raises(BrokerError, match="give at least one message id"):
        await broker.requeue_dead([])
    assert await broker.dead_count() == 2

    await broker.ack(await broker.lease("bob"))  # the queued one is delivered meanwhile
    async with trio.open_nursery() as waiting:
        woken = []

        async def recipient():
            woken.append(await broker.wait_for_messages("bob"))

        waiting.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        [requeued] = await broker.requeue_dead([doomed[0]])
    assert (requeued.id, requeued.state, requeued.attempts, requeued.last_error) == (doomed[0], "queued", 0, "boom")
    assert woken[0].ids == [doomed[0]]  # it keeps its id, and a waiting recipient wakes
    assert (woken[0].messages[0].attempts, woken[0].messages[0].body) == (1, "doomed 0")
    assert await broker.ack(woken[0]) == 1

    [dropped] = await broker.drop_dead([doomed[1]])
    assert (dropped.id, dropped.body) == (doomed[1], "doomed 1")
    assert await broker.dead_count() == 0
    assert doomed[1] not in {m.id for m in await broker.recent_for("bob")}
    assert (await broker.send("operator", "bob", "after")).id > doomed[1]  # ids are never reused


async def test_a_lease_given_back_for_a_restart_comes_again(open_broker):
    broker = await open_broker("bob", "carol", max_attempts=2)
    sent = await broker.send("alice", "bob", "in flight")
    other = await broker.send("alice", "carol", "left alone")
    stale = await broker.wait_for_messages("bob")
    held = await broker.wait_for_messages("carol")
    assert await broker.requeue_leased("bob") == []
    assert await broker.ack(stale) == 0  # the lease it names is gone
    again = await broker.wait_for_messages("bob")
    assert (again.ids, again.messages[0].attempts) == ([sent.id], 2)
    assert again.messages[0].last_error == "lease abandoned: restarted mid-turn"
    assert await broker.requeue_leased("bob") == [sent.id]  # its last attempt: dead-letter
    assert await broker.ack(held) == 1  # another recipient's lease was left alone
    assert [m.id for m in await broker.recent_for("carol")] == [other.id]


async def test_a_waiter_cancelled_mid_wait_loses_nothing(open_broker):
    broker = await open_broker("bob")
    got = []
    async with trio.open_nursery() as nursery:
        waiter = trio.CancelScope()

        async def recipient():
            with waiter:
                got.append(await broker.wait_for_messages("bob"))

        nursery.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(broker.send, "alice", "bob", "for whoever waits")
        await trio.testing.wait_all_tasks_blocked()
        waiter.cancel()
    # Whether the waiter took it or gave it back, it is delivered; given back, it comes again.
    await broker.requeue_leased("bob")
    with trio.fail_after(10):
        again = await broker.wait_for_messages("bob")
    assert [m.body for m in again.messages] == ["for whoever waits"]
    assert await broker.ack(again) == 1
    assert await broker.inbox_depth("bob") == 0


# -- a killed holder ---------------------------------------------------------------------


async def start_holder(backend, target):
    """A process that leases bob's messages and holds them; returns it once it printed the ids."""
    holder = await trio.lowlevel.open_process(
        [sys.executable, __file__, "holder", backend, json.dumps(target)], stdout=subprocess.PIPE
    )
    line = b""
    with trio.fail_after(30):
        async for chunk in holder.stdout:
            line += chunk
            if line.endswith(b"\n"):
                break
    return holder, json.loads(line)


@pytest.mark.parametrize("max_attempts", [3, 1])
async def test_a_lease_held_by_a_killed_process_comes_again_or_dies_on_its_last_attempt(
    backend, target, open_broker, max_attempts
):
    died = []

    async def on_dead(messages):
        died.extend(messages)

    broker = await open_broker("bob", max_attempts=max_attempts, on_dead=on_dead)
    sent = [(await broker.send("alice", "bob", f"m{n}")).id for n in range(2)]
    holder, held = await start_holder(backend, target)
    assert held == sent
    holder.send_signal(signal.SIGKILL)
    assert await holder.wait() == -signal.SIGKILL
    await holder.stdout.aclose()

    # sqlite: the daemon gives every lease back at start. JetStream: the lease runs out (ack_wait_seconds).
    if backend == "sqlite":
        await broker.requeue_leased()
    with trio.fail_after(30):
        if max_attempts > 1:
            again = await broker.wait_for_messages("bob")
            assert again.ids == sent
            assert [m.attempts for m in again.messages] == [2, 2]
            assert await broker.ack(again) == 2
        else:
            while await broker.dead_count("bob") < 2:
                assert await broker.lease("bob") is None  # a dead holder's last attempt is never handed out
                await trio.sleep(0.2)
            assert sorted(m.id for m in died) == sent
            assert {(m.state, m.attempts) for m in died} == {("dead", 1)}
    assert await broker.inbox_depth("bob") == 0


async def hold(backend, target):
    broker = open_backend(backend, target, "bob")
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        batch = await broker.wait_for_messages("bob")
        while len(batch.ids) < 2:
            more = await broker.wait_for_messages("bob")
            batch = type(batch)("bob", batch.token, batch.messages + more.messages)
        os.write(1, (json.dumps(batch.ids) + "\n").encode())
        await trio.sleep_forever()


# -- retention ------------------------------------------------------------------------------


async def test_retention_deletes_old_and_surplus_acked_messages_only(open_broker):
    broker = await open_broker("bob", "carol", max_attempts=1, retention_days=7, retention_per_recipient=2)
    for n in range(4):
        await broker.send("alice", "bob", f"acked {n}")
    await drain(broker, "bob")
    dead = await broker.send("alice", "bob", "dead")
    await broker.release(await broker.lease("bob"))
    leased = await broker.send("alice", "bob", "leased")
    await broker.lease("bob")
    queued = await broker.send("alice", "bob", "queued")
    await broker.send("alice", "carol", "carol's")
    await drain(broker, "carol")

    # Past the per-recipient cap: bob's two oldest acked go.
    assert await broker.prune() == 2
    assert [(m.body, m.state) for m in await broker.recent_for("bob")] == [
        ("queued", "queued"),
        ("leased", "leased"),
        ("dead", "dead"),
        ("acked 3", "acked"),
        ("acked 2", "acked"),
    ]
    assert await broker.prune() == 0
    # Past the age limit: every acked message goes; the rest stay.
    assert await broker.prune(now=queued.created_at + 8 * 86400) == 3
    assert [m.id for m in await broker.recent_for("bob")] == [queued.id, leased.id, dead.id]
    assert await broker.recent_for("carol") == []


async def test_only_the_operators_newest_messages_are_kept_since_nobody_acks_them(open_broker):
    broker = await open_broker("bob", retention_per_recipient=3)
    for n in range(5):
        await broker.send("bob", "operator", f"report {n}")
        await broker.send("alice", "bob", f"work {n}")
    assert [m.body for m in await broker.recent_for("operator")] == ["report 4", "report 3", "report 2"]
    assert await broker.inbox_depth("bob") == 5  # another recipient's queue is untouched


# -- wake on arrival ---------------------------------------------------------------------------


async def test_a_waiting_recipient_wakes_when_a_message_arrives(open_broker):
    broker = await open_broker("bob")
    got = []
    async with trio.open_nursery() as nursery:

        async def recipient():
            got.append(await broker.wait_for_messages("bob"))

        nursery.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        sent = await broker.send("operator", "bob", "wake up")
    [batch] = got
    assert batch.ids == [sent.id]
    assert batch.messages[0].state == "leased"


async def test_wait_for_arrival_returns_for_newer_messages_only(open_broker):
    broker = await open_broker("bob")
    old = await broker.send("alice", "bob", "old")
    await broker.wait_for_arrival("bob", after_id=0)  # one is queued already: at once
    arrived = trio.Event()

    async def wait():
        await broker.wait_for_arrival("bob", after_id=old.id)
        arrived.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        await broker.release(await broker.lease("bob"))  # the old one back in the queue: not newer
        await trio.testing.wait_all_tasks_blocked()
        assert not arrived.is_set()
        await broker.send("alice", "bob", "new")
    assert arrived.is_set()


# -- idempotency keys ----------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_returns_the_first_message_and_stores_nothing(open_broker):
    committed = []

    async def on_commit(message):
        committed.append(message.id)

    broker = await open_broker("bob", "carol", on_commit=on_commit)
    first = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    assert await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1") == first
    other = await broker.send("alice", "bob", "deploy v2", idempotency_key="k-1")  # keys belong to their sender
    assert other.id != first.id
    assert committed == [first.id, other.id]  # hooks hear of a message once
    assert await broker.inbox_depth("bob") == 2

    for retry, says in (
        ({"recipient": "carol"}, "with a different recipient"),
        ({"body": "deploy v3"}, "with a different body"),
        ({"kind": "event"}, "with a different kind"),
    ):
        message = {"recipient": "bob", "body": "deploy v2", "kind": "text"} | retry
        with pytest.raises(IdempotencyConflict) as caught:
            await broker.send("operator", idempotency_key="k-1", **message)
        assert f"already used by 'operator' for message {first.id} to 'bob' {says}; nothing was stored" in str(
            caught.value
        )
    assert await broker.inbox_depth("carol") == 0

    # Delivered and acked, a repeat still returns it, as it is now.
    await drain(broker, "bob")
    acked = await broker.send("operator", "bob", "deploy v2", idempotency_key="k-1")
    assert (acked.id, acked.state) == (first.id, "acked")
    assert await broker.inbox_depth("bob") == 0
    assert len(await broker.recent_for("bob")) == 2


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "error", "says"),
    [
        ({"recipient": ".."}, InvalidAddress, "recipient: invalid agent name '..'"),
        ({"recipient": "hive"}, InvalidAddress, "receives no messages"),
        ({"recipient": "nobody"}, UnknownRecipient, "no agent named 'nobody'"),
        ({"sender": "a.b"}, InvalidAddress, "sender: invalid agent name"),
        ({"body": ""}, InvalidBody, "empty"),
        ({"body": "x" * 70000}, InvalidBody, "70000 bytes, over the 65536-byte limit"),
        ({"body": b"caf\xe9"}, InvalidBody, "not valid UTF-8"),
        ({"kind": "shout"}, BrokerError, "message kind must be one of event, text"),
        ({"idempotency_key": "two words"}, InvalidIdempotencyKey, "idempotency key must be 1-128 characters"),
    ],
)
async def test_bad_input_is_refused_clearly_and_nothing_is_stored(open_broker, send, error, says):
    broker = await open_broker("bob")
    message = {"sender": "alice", "recipient": "bob", "body": "hi"} | send
    with pytest.raises(error, match=says):
        await broker.send(message.pop("sender"), message.pop("recipient"), message.pop("body"), **message)
    assert await broker.inbox_depth("bob") == 0
    assert await broker.recent_from("alice") == []
    assert broker.stats.messages == 0


def test_every_backend_is_a_message_broker():
    from hyperhive_core.brokers.jetstream import JetStreamBroker

    assert issubclass(SqliteBroker, MessageBroker)
    assert issubclass(JetStreamBroker, MessageBroker)


if __name__ == "__main__" and sys.argv[1] == "holder":
    trio.run(hold, sys.argv[2], json.loads(sys.argv[3]))
