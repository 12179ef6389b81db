"""Broker benchmarks, one JSON line per figure (docs/architecture.md §12).

Durable sends are compared with raw sqlite single-row ``synchronous=FULL`` commits
into the same table on the same disk, measured in the same run, so the ratios hold
on a noisy machine. Usage::

    .venv/bin/python bench/broker.py [--dir DIR] [--sends 2000] [--rows 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.broker import Broker, RecipientDirectory, m001_messages
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.store import Store, connect

BODY = "benchmark message " + "x" * 100


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "broker", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def fresh_store(directory: Path, name: str) -> Store:
    store = Store(directory / name)
    store.migrate({"core": CORE_MIGRATIONS})
    return store


def raw_commits(directory: Path, count: int) -> tuple[float, list[float]]:
    """Single-row FULL commits into the messages table, no broker, no threads: rate and latencies."""
    path = directory / "raw.db"
    db = connect(path)
    m001_messages(db)
    sql = "INSERT INTO messages (sender, recipient, kind, body, created_at) VALUES (?, ?, ?, ?, ?)"
    latencies = []
    began = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        db.execute("BEGIN")
        db.execute(sql, ("alice", "bob", "text", BODY, time.time()))
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    db.conn.close()
    remove_database(path)
    return count / elapsed, latencies


def remove_database(path: Path) -> None:
    """Delete a database and its WAL files, so the next round starts from an empty one."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def directory_of(*names: str) -> RecipientDirectory:
    policy = RecipientDirectory()
    for name in names:
        policy.add(name)
    return policy


async def durable_sends_per_second(
    directory: Path, count: int, senders: int, *, keyed: bool = False
) -> tuple[float, float]:
    """Sends/s with ``senders`` concurrent tasks (each send with an idempotency key if ``keyed``),
    and messages per transaction."""
    store = fresh_store(directory, f"sends-{senders}{'-keyed' if keyed else ''}.db")
    broker = Broker(store, policy=directory_of("bob"))
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)

        async def send_share(sender: str) -> None:
            for n in range(count // senders):
                await broker.send(sender, "bob", BODY, idempotency_key=f"{sender}-{n}" if keyed else None)

        began = time.perf_counter()
        async with trio.open_nursery() as group:
            for index in range(senders):
                group.start_soon(send_share, f"s{index}")
        elapsed = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    store.close()
    remove_database(store.path)
    return broker.stats.messages / elapsed, broker.stats.messages / broker.stats.transactions


class CommitClock(Store):
    """A store that notes when each durable transaction has committed."""

    last_commit = 0.0

    def write_sync(self, fn: Callable[..., Any], durable: bool = True) -> Any:
        result = super().write_sync(fn, durable)
        if durable:
            self.last_commit = time.perf_counter()
        return result


async def send_to_wake(directory: Path, count: int) -> tuple[list[float], list[float]]:
    """Latency from calling send (and from its commit) to the waiting recipient holding the batch."""
    store = CommitClock(directory / "wake.db")
    store.migrate({"core": CORE_MIGRATIONS})
    broker = Broker(store, policy=directory_of("bob"))
    from_send, from_commit = [], []
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        woken = trio.Event()

        async def recipient() -> None:
            nonlocal woken
            while True:
                await broker.wait_for_messages("bob")
                woke = time.perf_counter()
                from_send.append(woke - sent_at)
                from_commit.append(woke - store.last_commit)
                woken.set()

        nursery.start_soon(recipient)
        for _ in range(count):
            await trio.sleep(0.001)  # let the recipient settle into waiting
            woken = trio.Event()
            sent_at = time.perf_counter()
            await broker.send("alice", "bob", BODY)
            await woken.wait()
        nursery.cancel_scope.cancel()
    store.close()
    return from_send, from_commit


def build_messages(path: Path, rows: int, recipients: int) -> None:
    """``rows`` stored messages, mostly acked, spread over ``recipients``; fast, not durable."""
    store = Store(path)
    store.migrate({"core": CORE_MIGRATIONS})
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    batch = 100_000
    with conn:
        for start in range(0, rows, batch):
            conn.executemany(
                "INSERT INTO messages (sender, recipient, kind, body, created_at, state, attempts)"
                " VALUES (?, ?, 'text', ?, ?, ?, 1)",
                (
                    (f"agent-{n % 97}", f"agent-{n % recipients}", BODY, now, "acked" if n < rows - 5000 else "queued")
                    for n in range(start, min(rows, start + batch))
                ),
            )
    conn.close()


async def read_latencies(path: Path, calls: int, recipients: int) -> dict[str, list[float]]:
    store = Store(path)
    broker = Broker(store)
    rng = random.Random(7)
    samples: dict[str, list[float]] = {"recent_for": [], "recent_from": [], "inbox_depth": []}
    for _ in range(calls):
        for name, read in (
            ("recent_for", lambda: broker.recent_for(f"agent-{rng.randrange(recipients)}", 50)),
            ("recent_from", lambda: broker.recent_from(f"agent-{rng.randrange(97)}", 50)),
            ("inbox_depth", lambda: broker.inbox_depth(f"agent-{rng.randrange(recipients)}")),
        ):
            began = time.perf_counter()
            await read()
            samples[name].append(time.perf_counter() - began)
    store.close()
    return samples


async def main(directory: Path, sends: int, rows: int, rounds: int) -> None:
    # Raw and broker runs alternate, and each ratio is taken within its round, so
    # a disk that speeds up or slows down mid-run skews no ratio.
    raws, ones, eights, keyed_eights, per_transaction, commit_latencies = [], [], [], [], [], []
    for _ in range(rounds):
        raw, latencies = raw_commits(directory, sends)
        raws.append(raw)
        commit_latencies += latencies
        ones.append((await durable_sends_per_second(directory, sends, 1))[0])
        eight, batch = await durable_sends_per_second(directory, sends, 8)
        eights.append(eight)
        per_transaction.append(batch)
        keyed_eights.append((await durable_sends_per_second(directory, sends, 8, keyed=True))[0])
    median = statistics.median
    emit("raw_full_commits_per_s", median(raws), "commits/s", rounds=[round(raw) for raw in raws])
    # The floor under any durable send, and so under send→wake.
    emit("raw_full_commit_p50", percentile(commit_latencies, 0.5) * 1000, "ms")
    emit("raw_full_commit_p99", percentile(commit_latencies, 0.99) * 1000, "ms")
    emit(
        "durable_sends_per_s_1_sender",
        median(ones),
        "sends/s",
        ratio_to_raw=round(median(one / raw for one, raw in zip(ones, raws, strict=True)), 2),
        target_ratio=0.5,
    )
    emit(
        "durable_sends_per_s_8_senders",
        median(eights),
        "sends/s",
        ratio_to_raw=round(median(eight / raw for eight, raw in zip(eights, raws, strict=True)), 2),
        target_ratio=1.0,
        messages_per_transaction=round(median(per_transaction), 1),
    )
    # What an idempotency key costs a send: one indexed lookup in the same transaction.
    emit(
        "durable_sends_per_s_8_senders_with_idempotency_keys",
        median(keyed_eights),
        "sends/s",
        ratio_to_unkeyed=round(median(k / e for k, e in zip(keyed_eights, eights, strict=True)), 2),
    )

    from_send, from_commit = await send_to_wake(directory, min(sends, 1000))
    emit("send_to_wake_p50", percentile(from_send, 0.5) * 1000, "ms")
    emit("send_to_wake_p99", percentile(from_send, 0.99) * 1000, "ms", target=2.0)
    # The wake itself, without the fsync that every durable send waits for.
    emit("commit_to_wake_p50", percentile(from_commit, 0.5) * 1000, "ms")
    emit("commit_to_wake_p99", percentile(from_commit, 0.99) * 1000, "ms")

    path = directory / "million.db"
    began = time.perf_counter()
    build_messages(path, rows, recipients=100)
    emit("build_rows", rows, "rows", seconds=round(time.perf_counter() - began, 1))
    for name, samples in (await read_latencies(path, 2000, recipients=100)).items():
        emit(f"{name}_p50", statistics.median(samples) * 1000, "ms", rows=rows)
        emit(f"{name}_p99", percentile(samples, 0.99) * 1000, "ms", rows=rows, target=5.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temporary directory)")
    parser.add_argument("--sends", type=int, default=2000, help="messages per throughput run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="stored messages for the read figures")
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw and broker throughput runs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hyperhive-bench-", dir=args.dir))
    try:
        trio.run(main, workdir, args.sends, args.rows, args.rounds)
    finally:
        shutil.rmtree(workdir)
