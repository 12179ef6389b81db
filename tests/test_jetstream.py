"""The JetStream backend beyond the conformance suite: an unreachable cluster, credentials, durability, a hive."""

from __future__ import annotations

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.broker import BrokerError, BrokerSection, IdempotencyConflict, RecipientDirectory, SqliteBroker
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import JetStreamBroker
from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError, PluginError, StoreError
from hyperhive_core.testing import needs_claude, operator_reply, running_hive


def jetstream_broker(urls, **section):
    policy = RecipientDirectory()
    policy.add("bob")
    return JetStreamBroker(JetStreamSection(urls=urls, **section), BrokerSection(), policy=policy)


async def test_an_unreachable_cluster_refuses_sends_by_name_and_the_broker_reconnects_by_itself(nats_cluster, nursery):
    # Long enough for a restarted cluster to elect its streams' leaders: a send waits that long at most.
    broker = jetstream_broker(nats_cluster.urls, request_timeout_seconds=15.0)
    await nursery.start(broker.serve)
    before = await broker.send("operator", "bob", "before")

    nats_cluster.stop()
    with pytest.raises(StoreError) as refused:
        await broker.send("operator", "bob", "while it is away", idempotency_key="away-1")
    said = str(refused.value)
    assert said.startswith("message to 'bob' was not stored, or not confirmed: the NATS cluster at ")
    assert all(url in said for url in nats_cluster.urls)
    assert "send it again (with the same idempotency key, if it had one)" in said

    nats_cluster.start()  # the same nodes, ports and store dirs
    after = await broker.send("operator", "bob", "while it is away", idempotency_key="away-1")
    delivered = []
    with trio.fail_after(60):
        while len(delivered) < 2:  # a restarted consumer may hand them over in more than one batch
            batch = await broker.wait_for_messages("bob")
            delivered += [(m.id, m.body) for m in batch.messages]
            await broker.ack(batch)
    assert delivered == [(before.id, "before"), (after.id, "while it is away")]  # nothing lost, nothing twice


async def test_a_first_connect_to_nothing_names_the_urls(tmp_path):
    cluster = LocalCluster(tmp_path / "never-started")  # ports nobody listens on
    broker = jetstream_broker(cluster.urls, request_timeout_seconds=1.0)
    with pytest.raises(StoreError, match="cannot connect: the NATS cluster at nats://127.0.0.1:.* did not answer"):
        await broker.send("operator", "bob", "hi")
    await broker.aclose()


def test_a_credentials_file_others_can_read_is_refused(tmp_path):
    secret = tmp_path / "nats.creds"
    secret.write_text("hive:s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=f"can be read by others \\(mode 644\\).*run chmod 600 {secret}"):
        jetstream_broker(["nats://127.0.0.1:4222"], credentials_file=secret)
    secret.write_text("neither\nof them\n")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="holds neither user:password"):
        jetstream_broker(["nats://127.0.0.1:4222"], credentials_file=secret)
    with pytest.raises(ConfigError, match="does-not-exist: No such file"):
        jetstream_broker(["nats://127.0.0.1:4222"], credentials_file=tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"urls": []}, "must name at least one server"),
        ({"urls": ["http://x:4222"]}, "is not a NATS URL"),
        ({"name": "a.b"}, "name must be 1-32 letters"),
        ({"replicas": 2}, "replicas must be 1, 3 or 5"),
        ({"heartbeat_seconds": 30.0}, "must be shorter than ack_wait_seconds"),
        ({"tls_cert": "/x.pem"}, "tls_cert and tls_key go together"),
    ],
)
def test_nonsense_jetstream_settings_are_a_config_error(make_pm, make_config, section, says):
    with pytest.raises(ConfigError, match=says):
        make_config(make_pm(), jetstream=section)


async def test_credentials_from_a_0600_file_are_used(tmp_path, nursery):
    cluster = LocalCluster(tmp_path / "nats", authorization='users: [{user: "hive", password: "s3cret"}]')
    cluster.start()
    try:
        secret = tmp_path / "nats.creds"
        secret.write_text("hive:s3cret\n")
        secret.chmod(0o600)
        broker = jetstream_broker(cluster.urls, credentials_file=secret)
        await nursery.start(broker.serve)
        assert (await broker.send("operator", "bob", "authorized")).body == "authorized"

        secret.write_text("hive:wrong\n")
        refused = jetstream_broker(cluster.urls, credentials_file=secret, request_timeout_seconds=1.0)
        with pytest.raises(StoreError, match="cannot connect: the NATS cluster at .* refused the credentials"):
            await refused.send("operator", "bob", "not authorized")
        await refused.aclose()
    finally:
        cluster.close()


@pytest.mark.parametrize("sync_interval", ["always", "2m"])
async def test_a_kill_9_of_every_node_loses_no_send_that_returned(tmp_path, sync_interval):
    # Both durability settings docs/cluster.md offers: fsync on every write, and the
    # default interval, where a kill -9 still leaves the written pages to the OS.
    cluster = LocalCluster(tmp_path / "nats", sync_interval=sync_interval)
    cluster.start()
    try:
        for node in cluster.nodes:
            assert node.varz()["jetstream"]["config"].get("sync_always", False) is (
                sync_interval == "always"
            )  # omitted when off
        assert f"sync_interval: {sync_interval}" in cluster.config(cluster.nodes[0])
        broker = jetstream_broker(cluster.urls, request_timeout_seconds=10.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.serve)
            sent = [(await broker.send("operator", "bob", f"m{n}")).id for n in range(20)]
            cluster.stop(kill=True)
            cluster.start()
            delivered = []
            with trio.fail_after(30):
                while len(delivered) < len(sent):  # a restarted consumer may hand them over in more than one batch
                    batch = await broker.wait_for_messages("bob", limit=100)
                    delivered += batch.ids
                    await broker.ack(batch)
            nursery.cancel_scope.cancel()  # let go of the cluster before it closes
        assert delivered == sent
    finally:
        cluster.close()


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-batches", "one-by-one"])
async def test_concurrent_sends_go_as_groups_and_each_gets_its_own_id_and_answer(nats_cluster, nursery, atomic):
    broker = jetstream_broker(nats_cluster.urls)
    await nursery.start(broker.serve)
    first = await broker.send("s0", "bob", "first", idempotency_key="k-first")  # connect, make the streams
    broker.atomic = atomic  # as on a server without atomic batches (before 2.12)
    transactions = broker.stats.transactions
    results: dict[str, object] = {}

    async def send(name, sender, body, key=None):
        try:
            results[name] = await broker.send(sender, "bob", body, idempotency_key=key)
        except BrokerError as exc:
            results[name] = exc

    async with trio.open_nursery() as senders:
        for n in range(20):
            senders.start_soon(send, f"m{n}", f"s{n % 4}", f"body {n}")
        senders.start_soon(send, "again", "s0", "first", "k-first")  # a repeat of a key used before
        senders.start_soon(send, "twin-a", "s1", "twin", "k-twin")  # the same key twice in one group
        senders.start_soon(send, "twin-b", "s1", "twin", "k-twin")
        senders.start_soon(send, "clash", "s0", "not the first", "k-first")  # a used key, another body
    assert results["again"].id == first.id
    assert results["twin-a"].id == results["twin-b"].id
    assert isinstance(results["clash"], IdempotencyConflict)
    new = {results[f"m{n}"].id: f"body {n}" for n in range(20)} | {results["twin-a"].id: "twin"}
    assert len(new) == 21  # each its own id
    assert broker.stats.transactions - transactions < 24  # some went together
    delivered = {}
    with trio.fail_after(30):
        while len(delivered) < 22:
            batch = await broker.wait_for_messages("bob", limit=100)
            delivered |= {message.id: message.body for message in batch.messages}
            await broker.ack(batch)
    assert delivered == new | {first.id: "first"}  # the ids a group got are its messages' own


async def test_a_send_the_stream_refuses_in_a_group_fails_alone_and_every_other_is_stored_once(nats_cluster, nursery):
    broker = jetstream_broker(nats_cluster.urls, name="refusal")
    await nursery.start(broker.serve)
    first = await broker.send("s0", "bob", "first")  # connect, make the streams

    async def shrink() -> None:  # from now on the inbox stream refuses a message over 1 KiB
        config = (await broker._js.stream_info(broker.inbox_stream)).config
        config.max_msg_size = 1024
        await broker._js.update_stream(config)

    await broker._call(shrink)
    transactions = broker.stats.transactions
    results: dict[int, object] = {}

    async def send(n, body):
        try:
            results[n] = await broker.send(f"s{n % 4}", "bob", body)
        except StoreError as exc:
            results[n] = exc

    async with trio.open_nursery() as senders:
        for n in range(16):
            senders.start_soon(send, n, "too big " * 200 if n in (5, 11) else f"body {n}")
    for n in (5, 11):
        refused = results.pop(n)
        assert isinstance(refused, StoreError)
        assert str(refused).startswith("message to 'bob' was not stored, or not confirmed: the NATS cluster at ")
        assert "refused the request: message size exceeds maximum allowed" in str(refused)
    assert broker.stats.transactions - transactions < 16  # the others went in groups
    stored = {message.id: message.body for message in results.values()}
    assert sorted(stored.values()) == sorted(f"body {n}" for n in range(16) if n not in (5, 11))
    delivered: list[tuple[int, str]] = []
    with trio.fail_after(30):
        while len(delivered) < len(stored) + 1:
            batch = await broker.wait_for_messages("bob", limit=100)
            delivered += [(message.id, message.body) for message in batch.messages]
            await broker.ack(batch)
    assert sorted(delivered) == sorted((stored | {first.id: "first"}).items())  # each acked send once, no other
    assert await broker.inbox_depth("bob") == 0


async def test_a_message_acked_but_for_the_consumers_record_is_not_delivered_again(nats_cluster, nursery):
    # Short leases, so the dead holder's runs out within the test.
    timing = {"ack_wait_seconds": 2.0, "heartbeat_seconds": 0.5}
    holder, taker = jetstream_broker(nats_cluster.urls, **timing), jetstream_broker(nats_cluster.urls, **timing)
    await nursery.start(taker.serve)
    copied = await holder.send("operator", "bob", "acked, but the consumer never heard")
    with trio.fail_after(30):
        while (leased := await holder.lease("bob")) is None:  # a loaded machine may take longer than its linger
            pass
    [message] = leased.messages
    # An ack's first half, the copy to the acked stream; the holder dies before the ack itself.
    subject, record = holder._acked_copy(message)
    await holder._call(lambda: holder._publish(subject, record, {"Nats-Msg-Id": f"acked:{copied.id}"}))
    await holder.aclose()

    later = await taker.send("operator", "bob", "later")
    taken = []
    with trio.fail_after(60):
        while await taker.inbox_depth("bob"):  # the copied one comes back once the dead holder's lease runs out
            batch = await taker.lease("bob")
            if batch is not None:
                taken += batch.ids
                await taker.ack(batch)
            await trio.sleep(0.2)
    assert taken == [later.id]
    assert [(m.id, m.state) for m in await taker.recent_for("bob")] == [(later.id, "acked"), (copied.id, "acked")]


class OtherBroker:
    """A plugin's backend: the sqlite one under another name, to see the hook choose it."""

    def __init__(self):
        self.made = []

    @hookimpl
    def register_broker_backends(self, register):
        def factory(hive, *, policy, on_commit, on_dead):
            broker = SqliteBroker(hive.store, policy=policy, on_commit=on_commit, on_dead=on_dead)
            self.made.append(broker)
            return broker

        register("other", factory)


async def test_hook_register_broker_backends(make_pm, make_config):
    plugin = OtherBroker()
    pm = make_pm(other=plugin)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm, broker={"backend": "other"}), pm)
        assert plugin.made == [hive.broker]
        message = await hive.broker.send("hive", "operator", "through the plugin's backend")
        assert [m.id for m in await hive.broker.recent_for("operator")] == [message.id]
        nursery.cancel_scope.cancel()

    pm = make_pm()
    with (
        trio.fail_after(30),
        pytest.raises(ConfigError, match="'nope' is not available; registered backends: jetstream"),
    ):
        await run_hive(make_config(pm, broker={"backend": "nope"}), pm)

    class Clash:
        @hookimpl
        def register_broker_backends(self, register):
            register("sqlite", lambda hive, **callbacks: None)

    pm = make_pm(clash=Clash())
    with trio.fail_after(30), pytest.raises(PluginError, match="'sqlite' is registered by both 'core' and 'clash'"):
        await run_hive(make_config(pm), pm)


REPLY = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "operator", body = "got it" } },
  { text = "done" },
]
"""


@needs_claude
async def test_a_whole_hive_runs_on_jetstream(make_pm, tmp_path, nats_cluster):
    jetstream = {"urls": nats_cluster.urls, "ack_wait_seconds": 5.0, "heartbeat_seconds": 1.0}
    async with running_hive(tmp_path, make_pm(), REPLY, broker={"backend": "jetstream"}, jetstream=jetstream) as hive:
        assert isinstance(hive.broker, JetStreamBroker)
        sent = await hive.broker.send("operator", "manager", "hello over NATS")
        with trio.fail_after(60):
            reply = await operator_reply(hive, "manager")
        assert reply.startswith("got it")
        with trio.fail_after(10):
            while await hive.broker.inbox_depth("manager"):
                await trio.sleep(0.05)
        [delivered] = await hive.broker.recent_for("manager")
        assert (delivered.id, delivered.state) == (sent.id, "acked")
