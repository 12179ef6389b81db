"""The broker on JetStream (a local three-node R3 cluster) beside sqlite, one JSON line per figure.

Both run in the same process, round after round, alternating, so each ratio is
taken under the same machine load (reported with each line). Figures:

- sends per second with 1 and with 8 concurrent senders;
- send→wake latency (from calling ``send`` to the waiting recipient holding its
  batch) within a host (one broker), and across hosts on JetStream: two brokers,
  as two daemons' connections, the sender's to one NATS node and the
  recipient's to another;
- a node killed mid-run: 8 senders on one host (its connection on the node that
  is killed with SIGKILL), sending with idempotency keys and retrying as
  ``hyperhive send`` does; sends per second and p99 send latency before, while
  the node is down, and after it is back; every acked send delivered once.

Every figure is taken once per durability setting in ``--sync`` (by default
both: ``always``, an fsync of each write on each node, and ``2m``, the server's
default interval), each on a fresh cluster, and each line names its setting.

The throughput rounds end with the median ratio of JetStream to sqlite per
sender count, with the lowest and highest round's: on a shared machine one
round can be far off.

Usage::

    .venv/bin/python bench/cluster.py [--dir DIR] [--sends 1000] [--wakes 200] [--rounds 3] [--sync always,2m]
        [--phase-seconds 10] [--figures all|throughput]
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
from hyperhive_core.errors import StoreError
from hyperhive_core.store import Store

BODY = "benchmark message " + "x" * 100
SENDERS = 8


# Stamped on every line: the cluster's durability setting the figures were taken at.
SETTING: dict[str, str] = {}


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "cluster", "figure": figure, "value": round(value, 3), "unit": unit, "load": os.getloadavg()[0]}
    print(json.dumps(line | SETTING | extra), flush=True)


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
        return self.host(0, f"bench{self.count}")

    def host(self, node: int, name: str, **section: Any) -> JetStreamBroker:
        """A broker of hive ``name`` as a daemon on the host of node ``node``: that node first, the others after."""
        urls = self.cluster.urls[node:] + self.cluster.urls[:node]
        return JetStreamBroker(JetStreamSection(urls=urls, name=name, **section), BrokerSection(), policy=policy())


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


async def send_to_wake(sender: MessageBroker, recipient: MessageBroker, count: int) -> list[float]:
    """Milliseconds from calling ``send`` on one broker to a blocked ``wait_for_messages`` on the other returning."""
    latencies = []
    async with trio.open_nursery() as nursery:
        for broker in {id(sender): sender, id(recipient): recipient}.values():
            await nursery.start(broker.serve)
        await sender.send("alice", "bob", "warm up")  # connect, create the streams and the consumer
        await recipient.ack(await recipient.wait_for_messages("bob"))
        for _ in range(count):
            woke = trio.Event()
            began = [0.0]

            async def wait(woke: trio.Event = woke, began: list[float] = began) -> None:
                batch = await recipient.wait_for_messages("bob")
                latencies.append((time.perf_counter() - began[0]) * 1000)
                await recipient.ack(batch)
                woke.set()

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked(0.01)
            began[0] = time.perf_counter()
            await sender.send("alice", "bob", BODY)
            await woke.wait()
        nursery.cancel_scope.cancel()
    return latencies


def emit_latencies(figure: str, latencies: list[float], **extra: Any) -> None:
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        emit(f"{figure}_{name}", percentile(latencies, fraction), "ms", samples=len(latencies), **extra)


async def node_kill(backends: Backends, seconds: float) -> None:
    """8 senders on host 1 and a recipient on host 2 while node 1 is killed and restarted; one line per phase."""
    cluster = backends.cluster
    sender = backends.host(0, "kill", request_timeout_seconds=15.0)
    recipient = backends.host(1, "kill", request_timeout_seconds=15.0)
    phase = ["before"]
    sent: dict[str, list[tuple[float, float]]] = {"before": [], "down": [], "after": []}
    acked: set[str] = set()
    delivered: list[str] = []
    stop = trio.Event()

    async def send_until_stopped(name: str) -> None:
        for n in range(1_000_000):
            if stop.is_set():
                return
            key, began = f"{name}-{n}", time.perf_counter()
            with trio.fail_after(60):
                while True:  # as hyperhive send: the same key on every try
                    try:
                        await sender.send(name, "bob", key, idempotency_key=key)
                        break
                    except StoreError:
                        await trio.sleep(0.1)
            acked.add(key)
            sent[phase[0]].append((time.perf_counter(), (time.perf_counter() - began) * 1000))

    async def receive() -> None:
        while True:
            batch = await recipient.wait_for_messages("bob", limit=100)
            delivered.extend(message.body for message in batch.messages)
            while True:  # an ack the kill caught stays leased: ack it again, as a harness would
                try:
                    await recipient.ack(batch)
                    break
                except StoreError:
                    await trio.sleep(0.1)

    with trio.fail_after(seconds * 3 + 120):
        async with trio.open_nursery() as nursery:
            for broker in (sender, recipient):
                await nursery.start(broker.serve)
            nursery.start_soon(receive)
            async with trio.open_nursery() as senders:
                for index in range(SENDERS):
                    senders.start_soon(send_until_stopped, f"s{index}")
                await trio.sleep(seconds)
                phase[0] = "down"
                cluster.stop(cluster.nodes[0], kill=True)
                await trio.sleep(seconds)
                phase[0] = "after"
                await trio.to_thread.run_sync(cluster.start, cluster.nodes[0])
                await trio.sleep(seconds)
                stop.set()
            while len(set(delivered)) < len(acked):
                await trio.sleep(0.1)
            await trio.sleep(0.5)  # anything delivered twice shows up meanwhile
            nursery.cancel_scope.cancel()
    for name, samples in sent.items():
        times = [at for at, _ in samples]
        rate = len(samples) / (max(times) - min(times)) if len(samples) > 1 else 0.0
        emit("node_kill_sends_per_second", rate, "msg/s", phase=name, senders=SENDERS)
        latencies = [ms for _, ms in samples] or [0.0]
        emit_latencies("node_kill_send", latencies, phase=name)
        # The sends caught by the kill wait for a new stream leader: the longest shows how long that took.
        emit("node_kill_send_max", max(latencies), "ms", phase=name)
    lost, twice = len(acked - set(delivered)), len(delivered) - len(set(delivered))
    emit("node_kill_acked_lost", lost, "messages", acked=len(acked), delivered_twice=twice)


async def main(args: argparse.Namespace) -> None:
    root = Path(args.dir or tempfile.mkdtemp(prefix="hyperhive-cluster-bench-"))
    for sync_interval in args.sync.split(","):
        SETTING["sync_interval"] = sync_interval
        await measure(args, root / sync_interval, sync_interval)


async def measure(args: argparse.Namespace, root: Path, sync_interval: str) -> None:
    """Every figure against a fresh cluster whose nodes run with ``sync_interval``."""
    cluster = LocalCluster(root / "nats", sync_interval=sync_interval)
    cluster.start()
    emit("cluster", 3, "nodes", nats_server=cluster.nodes[0].varz()["version"])
    backends = Backends(root, cluster)
    try:
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for senders in (1, SENDERS):
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
        for senders in (1, SENDERS):
            ratios = [js / sq for js, sq in zip(rates[("jetstream", senders)], rates[("sqlite", senders)], strict=True)]
            emit(
                "jetstream_over_sqlite_median",
                statistics.median(ratios),
                "x",
                senders=senders,
                lowest=round(min(ratios), 3),
                highest=round(max(ratios), 3),
                rounds=len(ratios),
            )
        if args.figures == "throughput":
            return
        for kind, where in (("sqlite", "host"), ("jetstream", "host"), ("jetstream", "cross_host")):
            backends.count += 1
            if kind == "sqlite":
                sender = recipient = backends.open(kind)
            else:
                sender = backends.host(0, f"wake{backends.count}")
                recipient = backends.host(1, f"wake{backends.count}") if where == "cross_host" else sender
            try:
                latencies = await send_to_wake(sender, recipient, args.wakes)
            finally:
                for broker in {id(sender): sender, id(recipient): recipient}.values():
                    await close(broker)
            emit_latencies(f"send_to_wake_{where}" if where != "host" else "send_to_wake", latencies, backend=kind)
        await node_kill(backends, args.phase_seconds)
    finally:
        cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the sqlite files and the cluster's stores go (default: a temp dir)")
    parser.add_argument("--sends", type=int, default=1000, help="messages per throughput run")
    parser.add_argument("--wakes", type=int, default=200, help="send→wake samples per backend")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument(
        "--sync",
        default="always,2m",
        help="the nodes' sync_interval, one run each: always (fsync each write), 2m (the default interval)",
    )
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="each phase of the node kill")
    parser.add_argument(
        "--figures", choices=("all", "throughput"), default="all", help="throughput: only the sends/s rounds"
    )
    trio.run(main, parser.parse_args())
