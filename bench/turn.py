"""Turn latency, one JSON line per figure (docs/architecture.md §12).

Wake → first model request: from the moment a message to an agent is sent until
the model endpoint (the rehearsal model) receives the agent's request. Measured
in one run for the hive's warm, persistent Claude Code session; for an agent
asleep (``idle_release_seconds`` passed: no process, so the message starts its
container and Claude Code, which resumes the session); and for a fresh ``claude
-p`` process per turn, in the agent's container, with the same CLI, flags, MCP
config and endpoint.
Usage::

    .venv/bin/python bench/turn.py [--turns 20] [--backend process|bwrap]
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
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import make_plugin_manager

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
# Short, so the asleep series does not wait long; the warm turns follow one another sooner.
IDLE_RELEASE_SECONDS = 1.0


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "turn", "figure": figure, "value": round(value, 2), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def warm_latencies(hive: Hive, turns: int) -> list[float]:
    latencies = []
    for index in range(turns + 1):
        mark = hive.rehearsal.request_count
        started = time.time()
        await hive.broker.send("operator", "manager", f"turn {index}")
        request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
        async with hive.events.subscribe("manager", after_id=None) as events:
            if hive.agents.get("manager").status.state.value != "idle":
                async for event in events:
                    if event.type == "turn_end":
                        break
        if index:  # the first turn also starts the process: reported separately
            latencies.append((request.time - started) * 1000)
        else:
            emit("first_turn_with_process_start_ms", (request.time - started) * 1000, "ms")
    return latencies


async def asleep_latencies(hive: Hive, turns: int) -> list[float]:
    """Each turn: wait until the manager is asleep, then wake it with a message."""
    latencies = []
    for index in range(turns):
        async with hive.events.subscribe("manager", after_id=None) as events:
            if hive.agents.get("manager").status.state.value != "asleep":
                async for event in events:
                    if event.type == "state_change" and event.data["state"] == "asleep":
                        break
        mark = hive.rehearsal.request_count
        started = time.time()
        await hive.broker.send("operator", "manager", f"asleep turn {index}")
        request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
        latencies.append((request.time - started) * 1000)
    return latencies


async def fresh_latencies(hive: Hive, turns: int) -> list[float]:
    harness = hive.harnesses["manager"]
    options = await harness.session_options()
    argv = [
        str(hive.claude_cli),
        "-p",
        "--output-format",
        "json",
        "--model",
        options.model,
        "--mcp-config",
        json.dumps(options.mcp_config),
        "--strict-mcp-config",
        "--allowedTools",
        ",".join(options.allowed_tools),
    ]
    latencies = []
    # In the agent's container, as its own session runs: on bwrap its sandbox, and the model only through the daemon.
    async with hive.container_in_use("manager"):
        for index in range(turns):
            mark = hive.rehearsal.request_count
            started = time.time()
            spec = hive.container_spec("manager")
            process = await hive.backend.exec(spec, [*argv, "--", f"fresh turn {index}"], options.env)
            assert process.stdin is not None
            assert process.stdout is not None
            await process.stdin.aclose()
            request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
            latencies.append((request.time - started) * 1000)
            while await process.stdout.receive_some():  # its JSON result
                pass
            await process.wait()
    return latencies


async def main(turns: int, backend: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "scenario.toml").write_text(SCENARIO)
        pm = make_plugin_manager([])
        raw = {
            "hive": {"state_dir": str(root / "state"), "container_backend": backend},
            "claude": {"rehearsal_scenario": str(root / "scenario.toml"), "idle_release_seconds": IDLE_RELEASE_SECONDS},
            "bwrap": {"uid_range_start": 64400, "uid_range_size": 10},
        }
        config = load_config(root / "hyperhive.toml", raw, config_schemas(pm))
        async with trio.open_nursery() as nursery:
            hive = await nursery.start(run_hive, config, pm)
            warm = await warm_latencies(hive, turns)
            asleep = await asleep_latencies(hive, turns)
            fresh = await fresh_latencies(hive, turns)
            nursery.cancel_scope.cancel()
    for name, samples in (("warm", warm), ("asleep", asleep), ("fresh", fresh)):
        emit(f"{name}_wake_to_request_p50_ms", statistics.median(samples), "ms", turns=len(samples), backend=backend)
        emit(f"{name}_wake_to_request_p99_ms", percentile(samples, 0.99), "ms", turns=len(samples), backend=backend)
    emit("fresh_over_warm_p50", statistics.median(fresh) / statistics.median(warm), "ratio")
    emit("asleep_over_fresh_p50", statistics.median(asleep) / statistics.median(fresh), "ratio")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--backend", choices=("process", "bwrap"), default="process")
    args = parser.parse_args()
    trio.run(main, args.turns, args.backend)
