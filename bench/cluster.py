"""The broker on JetStream (a local three-node R3 cluster) beside sqlite, one JSON line per figure.

Both run in the same process, round after round, alternating, so each ratio is
taken under the same machine load (reported with each line). Figures: send→wake
latency (from calling ``send`` to the waiting recipient holding its batch), and
sends per second with 1 and with 8 concurrent senders. Usage::

    .venv/bin/python bench/cluster.py [--dir DIR] [--sends 1000] [--wakes 200] [--rounds 3] [--sync always|2m]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from hyperhive_core.broker import BrokerSection, MessageBroker, RecipientDirectory, SqliteBroker
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.brokers.jetstream import JetStreamBroker
from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.store import Store

BODY = "benchmark message " + "x" * 100


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "cluster", "figure": figure, "value": round(value, 3), "unit": unit, "load": os.getloadavg()[0]}
    print(json.dumps(line | extra), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def policy() -> RecipientDirectory:
    directory = RecipientDirectory()
    directory.add("bob")
    return directory


class Backends:
    """Opens a fresh broker of either kind for each measurement."""

    def __init__(self, root: Path, cluster: LocalCluster) -> None:
        self.root, self.cluster, self.count = root, cluster, 0

    def open(self, kind: str) -> MessageBroker:
        self.count += 1
        if kind == "sqlite":
            store = Store(self.root / f"hive-{self.count}.db")
            store.migrate({"core": CORE_MIGRATIONS})
            return SqliteBroker(store, BrokerSection(), policy=policy())
        section = JetStreamSection(urls=self.cluster.urls, name=f"bench{self.count}")
        return JetStreamBroker(section, BrokerSection(), policy=policy())


async def close(broker: MessageBroker) -> None:
    await broker.aclose()
    if isinstance(broker, SqliteBroker):
        broker.store.close()


async def sends_per_second(broker: MessageBroker, senders: int, count: int) -> float:
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        await broker.send("alice", "bob", "warm up")  # connect, create the streams

        async def send_share(sender: str) -> None:
            for _ in range(count // senders):
                await broker.send(sender, "bob", BODY)

        began = time.perf_counter()
        async with trio.open_nursery() as group:
            for index in range(senders):
                group.start_soon(send_share, f"s{index}")
        elapsed = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return (count // senders * senders) / elapsed


async def send_to_wake(broker: MessageBroker, count: int) -> list[float]:
    """Milliseconds from calling ``send`` to a blocked ``wait_for_messages`` returning the message."""
    latencies = []
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        await broker.send("alice", "bob", "warm up")  # connect, create the streams and the consumer
        await broker.ack(await broker.wait_for_messages("bob"))
        for _ in range(count):
            woke = trio.Event()
            began = [0.0]

            async def recipient(woke: trio.Event = woke, began: list[float] = began) -> None:
                batch = await broker.wait_for_messages("bob")
                latencies.append((time.perf_counter() - began[0]) * 1000)
                await broker.ack(batch)
                woke.set()

            nursery.start_soon(recipient)
            await trio.testing.wait_all_tasks_blocked(0.01)
            began[0] = time.perf_counter()
            await broker.send("alice", "bob", BODY)
            await woke.wait()
        nursery.cancel_scope.cancel()
    return latencies


async def main(args: argparse.Namespace) -> None:
    root = Path(args.dir or tempfile.mkdtemp(prefix="hyperhive-cluster-bench-"))
    cluster = LocalCluster(root / "nats", sync_interval=args.sync)
    cluster.start()
    emit("cluster", 3, "nodes", sync_interval=args.sync, nats_server=cluster.nodes[0].varz()["version"])
    backends = Backends(root, cluster)
    try:
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for senders in (1, 8):
                for kind in ("sqlite", "jetstream"):
                    broker = backends.open(kind)
                    try:
                        rate = await sends_per_second(broker, senders, args.sends)
                    finally:
                        await close(broker)
                    rates.setdefault((kind, senders), []).append(rate)
                    emit("sends_per_second", rate, "msg/s", backend=kind, senders=senders, round=round_)
                ratio = rates[("jetstream", senders)][-1] / rates[("sqlite", senders)][-1]
                emit("jetstream_over_sqlite", ratio, "x", senders=senders, round=round_)
        for (kind, senders), samples in rates.items():
            emit("sends_per_second_median", statistics.median(samples), "msg/s", backend=kind, senders=senders)
        for kind in ("sqlite", "jetstream"):
            broker = backends.open(kind)
            try:
                latencies = await send_to_wake(broker, args.wakes)
            finally:
                await close(broker)
            for name, fraction in (("p50", 0.5), ("p99", 0.99)):
                emit(
                    f"send_to_wake_{name}", percentile(latencies, fraction), "ms", backend=kind, samples=len(latencies)
                )
    finally:
        cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the sqlite files and the cluster's stores go (default: a temp dir)")
    parser.add_argument("--sends", type=int, default=1000, help="messages per throughput run")
    parser.add_argument("--wakes", type=int, default=200, help="send→wake samples per backend")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--sync", default="always", help="the nodes' sync_interval: always (fsync each write) or 2m")
    trio.run(main, parser.parse_args())
