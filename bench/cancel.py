"""Cancel, then a message: how soon the next turn starts, one JSON line per figure.

Each round starts a long turn, cancels it, and sends a message 0, 1, 5 or 20 ms
after the cancel, while the cancelled turn is still ending. The figure is the time
from that send to the next turn's ``turn_start`` (which carries both messages), and
from the cancel to the cancelled turn's end. The agent runs the real Claude Code CLI
against the rehearsal model, warm. Usage::

    .venv/bin/python bench/cancel.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.events import Event
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import make_plugin_manager

SCENARIO = """
[[agents.manager.rules]]
when = "hi "
steps = [{ text = "ok" }]

[[agents.manager.rules]]
when = "long"
steps = [{ text = "too late", delay = 600 }]
"""
DELAYS_MS = (0, 1, 5, 20)


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "cancel", "figure": figure, "value": round(value, 2), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def next_event(hive: Hive, kind: str, after: int) -> Event:
    async with hive.events.subscribe("manager", after_id=after) as events:
        async for event in events:
            if event.type == kind:
                return event
    raise RuntimeError("the event stream ended")


async def one_round(hive: Hive, label: str, delay_ms: int, after: int) -> tuple[float, float, int]:
    """Cancel-to-end and send-to-next-turn, in ms; and the last event id of the round."""
    mark = hive.rehearsal.request_count
    await hive.broker.send("operator", "manager", f"long {label}")
    started = await next_event(hive, "turn_start", after)
    await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
    cancelled_at = time.perf_counter()
    await hive.cancel("manager")
    await trio.sleep(delay_ms / 1000)
    await hive.broker.send("operator", "manager", f"hi {label}")
    sent_at = time.perf_counter()
    ended = await next_event(hive, "turn_end", started.id)
    ended_at = time.perf_counter()
    next_turn = await next_event(hive, "turn_start", ended.id)
    next_at = time.perf_counter()
    done = await next_event(hive, "turn_end", next_turn.id)
    return (ended_at - cancelled_at) * 1000, (next_at - sent_at) * 1000, done.id


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "scenario.toml").write_text(SCENARIO)
        pm = make_plugin_manager([])
        raw = {
            "hive": {"state_dir": str(root / "state"), "container_backend": "process"},
            "claude": {"rehearsal_scenario": str(root / "scenario.toml")},
        }
        config = load_config(root / "hyperhive.toml", raw, config_schemas(pm))
        ends: list[float] = []
        starts: dict[int, list[float]] = {delay: [] for delay in DELAYS_MS}
        async with trio.open_nursery() as nursery:
            hive = await nursery.start(run_hive, config, pm)
            after = 0
            for index in range(rounds):
                for delay in DELAYS_MS:
                    ended, started, after = await one_round(hive, f"{index}/{delay}", delay, after)
                    ends.append(ended)
                    starts[delay].append(started)
            nursery.cancel_scope.cancel()
    emit("cancel_to_turn_end_p50_ms", statistics.median(ends), "ms", rounds=len(ends))
    for delay, samples in starts.items():
        extra = {"sent_after_cancel_ms": delay, "rounds": len(samples)}
        emit("send_to_next_turn_start_p50_ms", statistics.median(samples), "ms", **extra)
        emit("send_to_next_turn_start_max_ms", max(samples), "ms", **extra)
    every = [sample for samples in starts.values() for sample in samples]
    emit("send_to_next_turn_start_p95_ms", percentile(every, 0.95), "ms", rounds=len(every))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    trio.run(main, parser.parse_args().rounds)
