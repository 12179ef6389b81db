"""Retention keeps the broker bounded: old and surplus acked messages go, nothing else."""

from __future__ import annotations

import os
import time

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.broker import Broker, BrokerSection, RecipientDirectory
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.daemon import run_hive
from hyperhive_core.store import Store

DAY = 86400


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    yield store
    store.close()


def make_broker(store, *recipients, **settings):
    policy = RecipientDirectory()
    for name in recipients:
        policy.add(name)
    return Broker(store, BrokerSection(**settings), policy=policy)


async def states(store):
    sql = "SELECT recipient, body, state FROM messages ORDER BY id"
    return await store.read(lambda db: db.execute(sql).fetchall())


async def deliver(broker, recipient, limit):
    """Lease and ack up to ``limit`` of ``recipient``'s messages, as a turn would."""
    batch = await broker.lease(recipient, limit=limit)
    await broker.ack(batch)


async def test_old_acked_messages_go_and_undelivered_ones_stay(store):
    broker = make_broker(store, "bob", retention_days=7, max_attempts=1)
    for body in ("acked", "dead", "leased", "queued"):
        await broker.send("alice", "bob", body)
    await deliver(broker, "bob", 1)
    await broker.release(await broker.lease("bob", limit=1))  # one attempt allowed: dead
    await broker.lease("bob", limit=1)

    assert await broker.prune(now=time.time() + 6 * DAY) == 0  # not old enough yet
    assert await broker.prune(now=time.time() + 8 * DAY) == 1
    assert await states(store) == [("bob", "dead", "dead"), ("bob", "leased", "leased"), ("bob", "queued", "queued")]


async def test_acked_messages_beyond_the_per_recipient_cap_go(store):
    broker = make_broker(store, "alice", "bob", retention_per_recipient=3)
    for n in range(6):
        await broker.send("operator", "alice", f"a{n}")
    for n in range(8):
        await broker.send("operator", "bob", f"b{n}")
    await deliver(broker, "alice", 2)  # under the cap: kept
    await deliver(broker, "bob", 6)  # b0..b5 acked, b6 and b7 still queued

    assert await broker.prune() == 3
    assert await states(store) == [
        *[("alice", f"a{n}", "acked" if n < 2 else "queued") for n in range(6)],
        *[("bob", f"b{n}", "acked") for n in range(3, 6)],  # the newest three acked
        ("bob", "b6", "queued"),
        ("bob", "b7", "queued"),
    ]
    assert [message.body for message in await broker.recent_for("bob", limit=2)] == ["b7", "b6"]


async def test_the_hive_runs_retention_and_checkpoints_the_wal(make_pm, make_config):
    class Bob:
        @hookimpl
        def on_startup(self, hive):
            hive.broker.policy.add("bob")

    pm = make_pm(bob=Bob())
    config = make_config(pm, broker={"retention_per_recipient": 1, "retention_interval_seconds": 0.05})
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        for n in range(3):
            await hive.broker.send("operator", "bob", f"m{n}")
        await deliver(hive.broker, "bob", 3)
        wal = hive.store.path.with_name("hive.db-wal")
        with trio.fail_after(10):
            while [m.body for m in await hive.broker.recent_for("bob")] != ["m2"] or wal.stat().st_size:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def size_on_disk(store):
    return sum(
        os.path.getsize(f"{store.path}{suffix}") for suffix in ("", "-wal") if os.path.exists(f"{store.path}{suffix}")
    )


@pytest.mark.slow
async def test_churning_100k_messages_keeps_the_database_bounded(store, nursery):
    recipients = [f"agent-{n}" for n in range(10)]
    broker = make_broker(store, *recipients, "asleep", retention_per_recipient=500)
    await nursery.start(broker.serve)
    await broker.send("operator", "asleep", "never delivered")  # unacked: must survive every pass

    async def send_some(sender, count):
        for n in range(count):
            await broker.send(sender, recipients[n % len(recipients)], f"{sender} says {n}: " + "x" * 200)

    sizes = []
    for _ in range(10):  # 10 rounds of 10k messages: sent, delivered, pruned
        async with trio.open_nursery() as senders:
            for sender in range(50):
                senders.start_soon(send_some, f"s{sender}", 200)
        for recipient in recipients:
            while await broker.inbox_depth(recipient):
                await deliver(broker, recipient, 1000)
        await broker.prune()
        await store.checkpoint()
        sizes.append(size_on_disk(store))

    assert broker.stats.messages == 100_001
    count = await store.read(lambda db: db.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert count == 10 * 500 + 1
    assert [(m.body, m.state) for m in await broker.recent_for("asleep")] == [("never delivered", "queued")]
    assert os.path.getsize(f"{store.path}-wal") == 0  # checkpointed and truncated
    # The peak is 5k kept + 10k new rows, reached in round two; after that freed
    # pages are reused and the file stops growing, though 80k more messages pass.
    assert max(sizes) <= sizes[1] * 1.1, sizes
