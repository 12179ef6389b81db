"""What tracing costs a turn: the hooks and event handling of one turn with and without the plugin. JSON lines.

Two hives on the process backend in one run, one without plugins and one with only
``tracing``, each with one agent. Each replays what a turn of that agent makes core
do, through the real hooks and the real event bus, ``--turns`` times: the
``message_headers`` hook for the operator's message and ``on_message`` once it is
stored; ``on_turn_start``; a ``tool_use`` event; the ``message_headers`` and
``on_message`` hooks of a send the turn makes; a ``tool_result`` event;
``on_turn_end`` with the CLI's result. No model runs: the figures are the hooks' own.

- ``turn_path_us``: CPU time in the turn's own task per turn (the hook calls and
  event publishing), which is what a turn waits for.
- ``turn_total_us``: CPU time of the whole daemon process per turn, from the first
  turn until the tracing plugin has stored every span of the last (its event
  watcher and span writer, the sqlite writes in worker threads, included).

CPU time, not wall time: on a shared, loaded machine the wall time of a step
includes waiting for a core, which says nothing about the step.

Each figure with and without the plugin, side by side, and the difference: the
plugin's cost per turn (the target is under 1 ms). Every line carries the load
average and the number of cores. Usage::

    .venv/bin/python bench/tracing.py [--turns 2000] [--rounds 3]
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

from hyperhive_core import Message, Turn, TurnExit, TurnResult, await_all
from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import make_plugin_manager

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
AGENT = "worker"
WARM_UP = 50


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "tracing", "figure": figure, "value": round(value, 2), "unit": unit, **extra}
    line |= {"load_1m": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    print(json.dumps(line), flush=True)


def message(hive: Hive, id_: int, sender: str, recipient: str, body: str) -> Message:
    """A message as the broker stores it, with the headers the hooks stamp (on_message follows, as on a send)."""
    headers: dict[str, str] = {}
    for stamped in hive.pm.hook.message_headers(hive=hive, sender=sender, recipient=recipient, kind="text", body=body):
        headers = {**(stamped or {}), **headers}
    return Message(id_, sender, recipient, "text", body, time.time(), "leased", 1, None, headers)


async def one_turn(hive: Hive, n: int) -> None:
    pm = hive.pm
    woke = message(hive, 2 * n, "operator", AGENT, f"task {n}")
    await await_all(pm.hook.on_message(hive=hive, message=woke))
    turn = Turn(AGENT, (woke,), woke.body)
    hive.events.publish(AGENT, "turn_start", message_ids=[woke.id])
    await await_all(pm.hook.on_turn_start(hive=hive, agent=AGENT, turn=turn))
    hive.events.publish(AGENT, "tool_use", id=f"toolu_{n}", name="mcp__hyperhive__send", input={"to": "operator"})
    sent = message(hive, 2 * n + 1, AGENT, "operator", f"done {n}")
    await await_all(pm.hook.on_message(hive=hive, message=sent))
    hive.events.publish(AGENT, "tool_result", tool_use_id=f"toolu_{n}", is_error=False, content="sent")
    turn.exit, turn.duration_ms = "ok", 5
    usage = {"input_tokens": 1200, "output_tokens": 80}
    turn.result = TurnResult(TurnExit.OK, "done", 5, 0.0, 1, ["send"], usage, [], None, None)
    hive.events.publish(AGENT, "turn_end", duration_ms=5, exit="ok", tool_calls=1, tools=["send"], cost_usd=0.0)
    await await_all(pm.hook.on_turn_end(hive=hive, agent=AGENT, turn=turn))


async def stored(hive: Hive, spans: int) -> None:
    """Wait until the tracing plugin stored ``spans`` spans in all (none without it)."""

    def count(db: Any) -> int:
        return db.execute("SELECT count(*) FROM tracing_spans").fetchone()[0]

    with trio.fail_after(120):
        while spans and await hive.store.read(count) < spans:
            await trio.sleep(0.001)


async def measure(plugins: list[str], turns: int) -> tuple[float, float]:
    """Per turn, in µs: the turn's own path, and until every span is stored."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "scenario.toml").write_text(SCENARIO)
        pm = make_plugin_manager(plugins)
        raw = {
            "hive": {"state_dir": str(root / "state"), "container_backend": "process"},
            "claude": {"rehearsal_scenario": str(root / "scenario.toml")},
            "agents": {AGENT: {}},
            # Turns back to back with no model between them: room for every event of the run, so the
            # plugin's watcher, however far behind, never loses its subscription (a real turn takes seconds).
            "events": {"subscriber_buffer": 100 * (WARM_UP + turns)},
        }
        config = load_config(root / "hyperhive.toml", raw, config_schemas(pm))
        async with trio.open_nursery() as nursery:
            hive = await nursery.start(run_hive, config, pm)
            spans_per_turn = 5 if plugins else 0  # message, turn, tool, send, model
            for n in range(WARM_UP):  # imports, first writes
                await one_turn(hive, n)
            await stored(hive, WARM_UP * spans_per_turn)
            in_path = 0.0
            started = time.process_time()
            for n in range(WARM_UP, WARM_UP + turns):
                mark = time.thread_time()
                await one_turn(hive, n)
                in_path += time.thread_time() - mark
                await trio.lowlevel.checkpoint()  # let the watcher and the writer run, as between real turns
            await stored(hive, (WARM_UP + turns) * spans_per_turn)
            total = time.process_time() - started
            nursery.cancel_scope.cancel()
    return in_path / turns * 1e6, total / turns * 1e6


async def main(turns: int, rounds: int) -> None:
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(rounds):  # alternate, so a change of load hits both alike
        for traced in (False, True):
            results[traced].append(await measure(["tracing"] if traced else [], turns))
    for index, figure in enumerate(("turn_path_us", "turn_total_us")):
        without = statistics.median(sample[index] for sample in results[False])
        with_ = statistics.median(sample[index] for sample in results[True])
        emit(figure, without, "us", plugin=False, turns=turns, rounds=rounds)
        emit(figure, with_, "us", plugin=True, turns=turns, rounds=rounds)
        emit(f"{figure}_overhead", with_ - without, "us", target_us=1000)
        emit(f"{figure}_ratio", with_ / without, "ratio")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.turns, args.rounds)
