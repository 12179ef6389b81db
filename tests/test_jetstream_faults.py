"""A NATS node killed with SIGKILL under load: nothing acked is lost, nothing is delivered twice."""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing

from hyperhive_core.broker import BrokerSection, RecipientDirectory
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import JetStreamBroker
from hyperhive_core.errors import StoreError

CLIENTS = 8
SENDS = 1500
# Short leases so a lease whose ack went unanswered comes back within the test.
TIMING = {"ack_wait_seconds": 5.0, "heartbeat_seconds": 1.0, "request_timeout_seconds": 15.0}


def host(cluster, node):
    """A daemon's broker on the host of ``node``: its own node first, the others for failover."""
    policy = RecipientDirectory()
    policy.add("bob")
    urls = cluster.urls[node:] + cluster.urls[:node]
    return JetStreamBroker(JetStreamSection(urls=urls, **TIMING), BrokerSection(), policy=policy)


async def test_a_node_killed_mid_run_loses_no_acked_send_and_delivers_none_twice(nats_cluster, nursery):
    hosts = [host(nats_cluster, 0), host(nats_cluster, 1)]
    for broker in hosts:
        await nursery.start(broker.serve)
    stored: dict[str, int] = {}  # key -> id, once its send returned
    deliveries: Counter[str] = Counter()
    unconfirmed: set[str] = set()  # delivered in a batch whose ack the cluster did not confirm: may come again
    retries = [0]

    async def client(index: int) -> None:
        broker = hosts[index % 2]
        for n in range(SENDS):
            key = f"c{index}-{n}"
            while True:  # as `hyperhive send` does: the same key on every try
                try:
                    message = await broker.send(f"c{index}", "bob", key, idempotency_key=key)
                    break
                except StoreError:
                    retries[0] += 1
                    await trio.sleep(0.1)
            assert stored.setdefault(key, message.id) == message.id

    async def consume(broker: JetStreamBroker) -> None:
        while True:
            batch = await broker.wait_for_messages("bob", limit=100)
            keys = [message.body for message in batch.messages]
            deliveries.update(keys)
            try:
                acked = await broker.ack(batch)
            except StoreError:
                acked = 0
            if acked < len(keys):
                unconfirmed.update(keys)

    node = nats_cluster.nodes[0]  # the first host's own node
    with trio.fail_after(600):
        async with trio.open_nursery() as consumers:
            for broker in hosts:
                consumers.start_soon(consume, broker)
            async with trio.open_nursery() as clients:
                for index in range(CLIENTS):
                    clients.start_soon(client, index)
                while len(stored) < CLIENTS * SENDS // 3:
                    await trio.sleep(0.05)
                nats_cluster.stop(node, kill=True)
                killed_at = len(stored)
                while len(stored) < killed_at + CLIENTS * SENDS // 3:
                    await trio.sleep(0.05)
                await trio.to_thread.run_sync(nats_cluster.start, node)
            while set(deliveries) != set(stored):
                await trio.sleep(0.1)
            # A delivery after an ack would come within a lease's ack_wait: wait it out.
            await trio.sleep(TIMING["ack_wait_seconds"] + 2)
            consumers.cancel_scope.cancel()

    assert len(stored) == CLIENTS * SENDS
    assert len(set(stored.values())) == CLIENTS * SENDS  # one message per key, however many tries
    assert set(deliveries) == set(stored)  # no acked send lost
    twice = {key: count for key, count in deliveries.items() if count > 1}
    assert not {key for key in twice if key not in unconfirmed}  # none delivered again after its ack
    for broker in hosts:
        assert await broker.inbox_depth("bob") == 0
    print(f"retries: {retries[0]}, delivered again after an unconfirmed ack: {len(twice)}")


async def test_a_recipient_waiting_when_its_consumer_leader_is_killed_still_gets_the_next_message(
    nats_cluster, nursery
):
    sender, recipient = host(nats_cluster, 0), host(nats_cluster, 1)
    for broker in (sender, recipient):
        await nursery.start(broker.serve)
    await sender.send("operator", "bob", "first")
    await recipient.ack(await recipient.wait_for_messages("bob"))  # the consumer exists, with a leader
    info = await recipient._call(lambda: recipient._js.consumer_info(recipient.inbox_stream, "bob"))
    leader = next(node for node in nats_cluster.nodes if node.name == info.cluster.leader)
    survivor = recipient if leader is nats_cluster.nodes[0] else sender  # a connection whose node stays up
    got = trio.Event()
    batches = []

    async def wait() -> None:
        batches.append(await recipient.wait_for_messages("bob"))
        got.set()

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked(0.5)  # its pull is pending on the consumer leader
    nats_cluster.stop(leader, kill=True)  # the pending pull goes with it, unanswered
    with trio.fail_after(120):
        sent = await survivor.send("operator", "bob", "after the kill", idempotency_key="after-kill")
        await got.wait()
    assert batches[0].ids == [sent.id]
    await recipient.ack(batches[0])


async def test_a_repeated_send_looks_its_first_copy_up_past_a_killed_stream_leader(nats_cluster, nursery):
    # A repeat is checked against the message its key first stored, read from the dead stream first: with
    # that stream's leader killed, the read is asked again until a new leader answers, within the request timeout.
    brokers = [host(nats_cluster, node) for node in range(3)]
    first = await brokers[0].send("operator", "bob", "once", idempotency_key="once")
    info = await brokers[0]._call(lambda: brokers[0]._js.stream_info(brokers[0].dead_stream))
    leader = next(index for index, node in enumerate(nats_cluster.nodes) if node.name == info.cluster.leader)
    survivor = brokers[(leader + 1) % 3]  # connected to a node that stays up
    await nursery.start(survivor.serve)
    nats_cluster.stop(nats_cluster.nodes[leader], kill=True)
    with trio.fail_after(120):
        again = await survivor.send("operator", "bob", "once", idempotency_key="once")
    assert (again.id, again.body) == (first.id, "once")
    for broker in brokers:
        await broker.aclose()
