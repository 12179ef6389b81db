"""Dead-letter benchmarks, one JSON line per figure: what the dashboard and ``hyperhive dead`` wait for.

A busy agent: ``--turns`` recorded turns over the past week, a full event history
(``[events] history_per_agent``), and ``--dead`` dead letters sent a week ago, each
tried in five turns: the worst case, where every turn since is searched for their
attempts. Times ``dead_letters`` (the list with every letter's attempts, which the
host page loads and refetches on each dead-letter event) and ``dead_letter`` (one,
with what each attempt did). Usage::

    .venv/bin/python bench/dead_letters.py [--dir DIR] [--turns 100000] [--dead 100] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from hyperhive_core.broker import Broker, BrokerSection, RecipientDirectory
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.dead_letters import dead_letter, dead_letters
from hyperhive_core.events import EventBus
from hyperhive_core.store import Store

AGENT = "worker"
ATTEMPTS = 5
TURN_INSERT = (
    "INSERT INTO turns (agent, started_at, duration_ms, exit, cost_usd, tool_calls, message_ids) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "dead_letters", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def busy_turns(db: Any, count: int, now: float) -> None:
    """``count`` ordinary turns of the agent over the past week, each with a batch of its own."""
    week = 7 * 86400
    rows = [
        (AGENT, now - week + week * n / count, 900, "ok", 0.001, 2, json.dumps([10_000_000 + n])) for n in range(count)
    ]
    db.conn.executemany(TURN_INSERT, rows)


async def build(directory: Path, turns: int, dead: int) -> SimpleNamespace:
    store = Store(directory / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    policy = RecipientDirectory()
    policy.add(AGENT)
    broker = Broker(store, BrokerSection(max_attempts=ATTEMPTS), policy=policy)
    events = EventBus(store)
    now = time.time()
    await store.write(lambda db: busy_turns(db, turns, now))
    ids = [(await broker.send("operator", AGENT, f"task {n}: " + "x" * 500)).id for n in range(dead)]
    # Sent a week ago, so every busy turn since lies in the window the attempts are looked for in.
    await store.write(lambda db: db.execute("UPDATE messages SET created_at = ?", (now - 7 * 86400 - 60,)))
    for attempt in range(ATTEMPTS):
        batches = []
        while batch := await broker.lease(AGENT):  # batches of [broker] batch_limit, as turns get them
            batches.append(batch)
        for number, batch in enumerate(batches):
            started = time.time()
            events.publish(AGENT, "turn_start", message_ids=batch.ids)
            for n in range(3):
                tool_id = f"t{attempt}-{number}-{n}"
                events.publish(AGENT, "tool_use", id=tool_id, name="Bash", input={"command": "make test"})
                events.publish(AGENT, "tool_result", tool_use_id=tool_id, is_error=False, content="ok " * 200)
            events.publish(AGENT, "turn_end", exit="failure", duration_ms=1200, tool_calls=3, tools=["Bash"])
            row = (AGENT, started, 1200, "failure", 0.002, 3, json.dumps(batch.ids))
            await store.write(lambda db, row=row: db.conn.execute(TURN_INSERT, row))
            await broker.release(batch, error="turn failure: api_error")
    # Fill the rest of the history ring with other work.
    for n in range(events.settings.history_per_agent):
        events.publish(AGENT, "assistant_text", text=f"other work {n}")
    async with trio.open_nursery() as nursery:
        await nursery.start(events.serve)
        nursery.cancel_scope.cancel()  # its final flush stores everything published
    assert await broker.dead_count() == dead
    return SimpleNamespace(store=store, broker=broker, events=events, dead_ids=ids)


async def timed(runs: int, fn: Any) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


async def main(directory: Path, turns: int, dead: int, runs: int) -> None:
    hive = await build(directory, turns, dead)
    try:
        listed = await dead_letters(hive)
        assert len(listed["dead_letters"]) == min(dead, 100)
        assert all(len(letter["history"]) == ATTEMPTS for letter in listed["dead_letters"])
        scale = {"turns": turns, "dead": dead, "runs": runs}
        samples = await timed(runs, lambda: dead_letters(hive))
        emit("list_p50", percentile(samples, 0.5), "ms", **scale)
        emit("list_p99", percentile(samples, 0.99), "ms", **scale)
        one = random.Random(7).choice(hive.dead_ids)
        samples = await timed(runs, lambda: dead_letter(hive, one))
        emit("show_p50", percentile(samples, 0.5), "ms", **scale)
        emit("show_p99", percentile(samples, 0.99), "ms", **scale)
    finally:
        hive.store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a temp dir)")
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=100)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dead-", dir=args.dir))
    try:
        trio.run(main, work, args.turns, args.dead, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
