"""``MessageBroker.health`` for ``hyperhive status``: the NATS nodes, streams and consumers, or the sqlite file."""

from __future__ import annotations

from pathlib import Path

import trio

from hyperhive_core import host_commands
from hyperhive_core.broker import BrokerSection, RecipientDirectory, SqliteBroker
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import JetStreamBroker
from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.daemon import run_hive
from hyperhive_core.fastcli import broker_lines
from hyperhive_core.store import Store


def policy() -> RecipientDirectory:
    directory = RecipientDirectory()
    directory.add("bob")
    return directory


async def test_jetstream_health_shows_nodes_replicas_and_backlog_and_a_node_down(nats_cluster, nursery):
    broker = JetStreamBroker(JetStreamSection(urls=nats_cluster.urls), BrokerSection(), policy=policy())
    await nursery.start(broker.serve)
    for n in range(3):
        await broker.send("operator", "bob", f"m{n}")
    leased = await broker.lease("bob", limit=1)

    health = await broker.health()
    assert health["ok"] is True
    assert health["connected"]["url"] == nats_cluster.urls[0]  # the first URL: this host's own node
    assert health["connected"]["server"] == "n1"
    inbox, acked, dead = health["streams"]
    assert (inbox["name"], inbox["messages"]) == ("HIVE_main_INBOX", 3)
    assert (acked["messages"], dead["messages"]) == (0, 0)
    for stream in health["streams"]:
        assert stream["leader"] in ("n1", "n2", "n3")
        assert sorted([stream["leader"], *(peer["name"] for peer in stream["replicas"])]) == ["n1", "n2", "n3"]
    [bob] = health["consumers"]
    assert (bob["name"], bob["pending"], bob["ack_pending"]) == ("bob", 2, 1)
    lines = broker_lines(health)
    assert lines[0].startswith(f"broker     jetstream 'main' via {nats_cluster.urls[0]} (node n1, nats-server 2.")
    assert "DEGRADED" not in lines[0]
    assert any(line.startswith("  stream   HIVE_main_INBOX") and "3 messages" in line for line in lines)
    assert "  inbox    bob                      2 pending, 1 leased" in lines
    await broker.ack(leased)

    nats_cluster.stop(nats_cluster.nodes[2], kill=True)

    def n3(health):
        return [peer for stream in health.get("streams", ()) for peer in stream["replicas"] if peer["name"] == "n3"]

    with trio.fail_after(60):
        # A stream n3 led answers once another node leads it; the leaders notice n3 gone within seconds.
        while not (gone := n3(health := await broker.health())) or any(p["current"] for p in gone):
            await trio.sleep(0.5)
    assert health["ok"] is False
    assert len(gone) == 3  # a replica of each stream, none of them leading now
    assert "DEGRADED" in broker_lines(health)[0]

    await trio.to_thread.run_sync(nats_cluster.start, nats_cluster.nodes[2])
    with trio.fail_after(60):
        while not (await broker.health())["ok"]:
            await trio.sleep(0.5)


async def test_an_unreachable_cluster_is_an_error_in_health_not_an_exception(tmp_path):
    cluster = LocalCluster(tmp_path / "never-started")
    broker = JetStreamBroker(
        JetStreamSection(urls=cluster.urls, request_timeout_seconds=1.0), BrokerSection(), policy=policy()
    )
    health = await broker.health()
    await broker.aclose()
    assert health["ok"] is False
    assert all(url in health["error"] for url in cluster.urls)
    [line] = broker_lines(health)
    assert line.startswith("broker     jetstream 'main': UNREACHABLE: cannot connect: the NATS cluster at nats://")


async def test_sqlite_health_shows_the_file_and_counts(tmp_path: Path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    broker = SqliteBroker(store, BrokerSection(), policy=policy())
    for n in range(3):
        await broker.send("operator", "bob", f"m{n}")
    await broker.lease("bob", limit=1)
    health = await broker.health()
    assert health == {
        "backend": "sqlite",
        "file": str(tmp_path / "hive.db"),
        "wal_bytes": (tmp_path / "hive.db-wal").stat().st_size,
        "queued": 2,
        "leased": 1,
        "dead": 0,
    }
    assert health["wal_bytes"] > 0
    assert broker_lines(health) == [
        f"broker     sqlite {tmp_path / 'hive.db'} (WAL {health['wal_bytes'] // 1024} KiB): 2 queued, 1 leased, 0 dead"
    ]
    store.close()


async def test_status_reports_the_broker(make_pm, make_config):
    pm = make_pm()
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        status = await host_commands.status(hive)
        assert status["broker"]["backend"] == "sqlite"
        assert status["broker"]["file"] == str(hive.store.path)
        nursery.cancel_scope.cancel()
