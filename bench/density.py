"""Density: what N agents cost the host warm and asleep, and how fast they wake. JSON lines.

For each N (10, 50, 100 by default) a fresh daemon (a child process, so each N starts
clean) runs N agents plus the manager on the rehearsal model, with real bubblewrap
sandboxes and the real Claude Code CLI, and:

1. sends every agent a message at once: each starts its CLI (``max_concurrent_starts``
   at a time) and takes one turn; ``time_to_all_idle_s`` is until the last turn ended;
2. measures PSS warm and idle: per agent, the sum of ``/proc/PID/smaps_rollup`` Pss
   over every process of the agent's uid (bwrap, its init, Claude Code, the MCP
   relay, the model forwarder); the daemon's own PSS separately (it holds the
   rehearsal model too);
3. waits for every agent to fall asleep (``idle_release_seconds`` after its turn)
   and measures the same again: no process should be left, so an agent then costs
   only its share of the daemon (``daemon_pss_per_agent_mib``, from the daemon's
   growth since start, and across the runs for different N);
4. wakes a few agents one at a time (send → the model's first request, p50/p99);
5. wakes the rest at once, the **storm**, while a poller asks the host socket for
   ``status`` every 100 ms (its latency p50/p99/max; the same at rest beside it),
   and an instrument times every step the daemon's tasks take on the event loop
   (p50/p99/max, and which task took the longest): nothing slow may run there.

Every line carries the host's load average. The state dir is a temporary directory;
afterwards the bench checks that no process of the agents' uids and no cgroup of the
hive is left. Needs root (bwrap runs each agent as its own uid) and ``make install``.
Usage::

    .venv/bin/python bench/density.py [--agents 10 50 100] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.containers.cgroups import hive_id
from hyperhive_core.daemon import run_hive
from hyperhive_core.hive import Hive
from hyperhive_core.hostsock import request
from hyperhive_core.memory import MIB, pss_bytes
from hyperhive_core.plugins import make_plugin_manager

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
UIDS = 64000
SINGLE_WAKES = 10
POLL_SECONDS = 0.1


def emit(agents: int, figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {
        "bench": "density",
        "agents": agents,
        "figure": figure,
        "value": round(value, 3),
        "unit": unit,
        "loadavg": [round(load, 2) for load in os.getloadavg()],
        **extra,
    }
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest rank, as the telemetry plugin's: always one of the samples."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def processes_by_uid(uids: set[int]) -> dict[int, list[int]]:
    """Live (non-zombie) processes of each of ``uids``."""
    found: dict[int, list[int]] = {uid: [] for uid in uids}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        uid = int(status["Uid"].split()[0])
        if uid in found and not status["State"].strip().startswith("Z"):
            found[uid].append(int(entry.name))
    return found


class Run:
    """One daemon with ``n`` agents; each method is one phase of the bench."""

    def __init__(self, hive: Hive, n: int) -> None:
        self.hive = hive
        self.n = n
        self.names = [f"a{index:03d}" for index in range(n)]
        self.uids: dict[str, int] = {}

    async def resolve_uids(self) -> None:
        for name in self.names:
            uid = await self.hive.backend.uids.lookup(name)
            assert uid is not None, f"{name} has no uid"
            self.uids[name] = uid

    async def memory(self, phase: str) -> float:
        """Emit PSS per agent and the daemon's; return the daemon's in bytes."""
        by_uid = await trio.to_thread.run_sync(processes_by_uid, set(self.uids.values()))
        per_agent = [await trio.to_thread.run_sync(pss_bytes, by_uid[uid]) for uid in self.uids.values()]
        daemon = await trio.to_thread.run_sync(pss_bytes, [os.getpid()])
        live = sum(len(pids) for pids in by_uid.values())
        emit(self.n, f"{phase}_pss_total_mib", sum(per_agent) / MIB, "MiB", processes=live)
        emit(self.n, f"{phase}_pss_per_agent_mean_mib", statistics.mean(per_agent) / MIB, "MiB")
        emit(self.n, f"{phase}_pss_per_agent_max_mib", max(per_agent) / MIB, "MiB")
        emit(self.n, f"{phase}_daemon_pss_mib", daemon / MIB, "MiB")
        return daemon

    async def wake(self, names: list[str]) -> tuple[list[float], float]:
        """Send each a message at once; return the send → first request latencies (s) and the time to all idle."""
        hive = self.hive
        mark = hive.rehearsal.request_count
        waiting = set(names)
        async with hive.events.subscribe(None) as events:
            began = time.time()
            sent = {}
            for name in names:
                sent[name] = time.time()
                await hive.broker.send("operator", name, "wake up")
            async for event in events:
                if event.type == "turn_end" and event.agent in waiting:
                    waiting.discard(event.agent)
                    if not waiting:
                        break
        idle_after = time.time() - began
        first: dict[str, float] = {}
        for recorded in hive.rehearsal.requests:
            if recorded.seq > mark and recorded.agent in sent and recorded.agent not in first:
                first[recorded.agent] = recorded.time - sent[recorded.agent]
        return [first[name] for name in names], idle_after

    async def all_asleep(self) -> float:
        """Wait until every agent shows asleep; return how long that took."""
        began = time.time()
        async with self.hive.events.subscribe(None) as events:
            if self.awake():
                async for event in events:
                    if event.type == "state_change" and not self.awake():
                        break
        return time.time() - began

    def awake(self) -> list[str]:
        return [name for name in self.names if self.hive.agents.get(name).status.state.value != "asleep"]


class LoopSteps(trio.abc.Instrument):
    """How long each task step held the event loop (a long one starves every other task):
    wall time, and the loop thread's CPU time, which the host's other load does not inflate."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float, str]] = []
        self._began: tuple[float, float] | None = None  # the step that adds the instrument began unseen

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = (time.perf_counter(), time.thread_time())

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._began is not None:
            wall, cpu = self._began
            self.steps.append((time.perf_counter() - wall, time.thread_time() - cpu, task.name))


def poll_status(socket: Path, latencies: list[float], stop: threading.Event) -> None:
    """Ask the host socket for ``status`` every POLL_SECONDS until ``stop``; note each answer's latency."""
    while not stop.is_set():
        began = time.monotonic()
        request(socket, "status")
        latencies.append(time.monotonic() - began)
        stop.wait(POLL_SECONDS)


async def polled(hive: Hive, work: Any) -> tuple[Any, list[float]]:
    """Run ``work()`` while a thread polls the host socket; return its result and the latencies."""
    latencies: list[float] = []
    stop = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, poll_status, hive.paths.host_socket, latencies, stop)
        try:
            result = await work()
        finally:
            stop.set()
    return result, latencies


def emit_latencies(n: int, name: str, samples: list[float], **extra: Any) -> None:
    samples_ms = [sample * 1000 for sample in samples]
    emit(n, f"{name}_p50_ms", percentile(samples_ms, 0.5), "ms", samples=len(samples), **extra)
    emit(n, f"{name}_p99_ms", percentile(samples_ms, 0.99), "ms", samples=len(samples), **extra)


async def measure(n: int, idle: float, root: Path) -> None:
    (root / "scenario.toml").write_text(SCENARIO)
    pm = make_plugin_manager([])
    raw = {
        "hive": {"state_dir": str(root / "state"), "container_backend": "bwrap"},
        "claude": {"rehearsal_scenario": str(root / "scenario.toml"), "idle_release_seconds": idle},
        "bwrap": {"uid_range_start": UIDS, "uid_range_size": 256},
        "agents": {f"a{index:03d}": {} for index in range(n)},
    }
    config = load_config(root / "hyperhive.toml", raw, config_schemas(pm))
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        run = Run(hive, n)
        await run.resolve_uids()
        emit(n, "max_concurrent_starts", hive.start_slots.total_tokens, "starts", idle_release_seconds=idle)
        start_daemon = await run.memory("registered")

        _, rest = await polled(hive, lambda: trio.sleep(2))
        emit_latencies(n, "status_at_rest", rest)
        first, to_idle = await run.wake(run.names)
        emit(n, "time_to_all_idle_s", to_idle, "s")
        emit_latencies(n, "cold_start_to_request", first)
        # Below n if some fell asleep before the last turn ended: then idle_release_seconds was too short.
        emit(n, "warm_agents_when_measured", len(run.awake()), "agents")
        await run.memory("warm")

        emit(n, "time_to_all_asleep_s", await run.all_asleep(), "s")
        asleep_daemon = await run.memory("asleep")
        emit(n, "daemon_growth_per_agent_mib", (asleep_daemon - start_daemon) / n / MIB, "MiB")

        singles = run.names[: min(SINGLE_WAKES, n // 2)]
        single_latencies = []
        for name in singles:
            latency, _ = await run.wake([name])
            single_latencies += latency
        emit_latencies(n, "wake_single_to_request", single_latencies)

        storm = run.names[len(singles) :]
        steps = LoopSteps()
        trio.lowlevel.add_instrument(steps)
        (storm_latencies, storm_idle), during = await polled(hive, lambda: run.wake(storm))
        trio.lowlevel.remove_instrument(steps)
        for what, index in (("wall", 0), ("cpu", 1)):
            emit_latencies(n, f"loop_step_{what}_during_storm", [step[index] for step in steps.steps])
            worst: dict[str, float] = {}  # the longest step of each task, by the task's name
            for step in steps.steps:
                worst[step[2]] = max(worst.get(step[2], 0.0), step[index])
            top = sorted(worst.items(), key=lambda item: -item[1])[:5]
            tasks = {".".join(name.split(".")[-2:]): round(seconds * 1000, 1) for name, seconds in top}
            emit(n, f"loop_step_{what}_during_storm_max_ms", top[0][1] * 1000, "ms", longest_by_task=tasks)
        emit_latencies(n, "wake_storm_to_request", storm_latencies, storm=len(storm))
        emit(n, "wake_storm_all_idle_s", storm_idle, "s", storm=len(storm))
        emit_latencies(n, "status_during_storm", during, storm=len(storm))
        emit(n, "status_during_storm_max_ms", max(during) * 1000, "ms", samples=len(during))
        nursery.cancel_scope.cancel()
    cgroups = list(Path("/sys/fs/cgroup").glob(f"*/**/hyperhive/{hive_id(root / 'state')}"))
    left = sum(len(pids) for pids in processes_by_uid(set(run.uids.values())).values())
    emit(n, "left_after_cleanup", left + len(cgroups), "processes+cgroups", processes=left, cgroups=len(cgroups))


def child(n: int, idle: float, timeout: float) -> None:
    async def main() -> None:
        with trio.fail_after(timeout), tempfile.TemporaryDirectory(prefix="hyperhive-density-") as tmp:
            await measure(n, idle, Path(tmp))

    trio.run(main)


def parent(counts: list[int], timeout: float) -> None:
    start_pss = {}
    for n in counts:
        idle = 30 + 1.5 * n  # outlasts the first storm of starts: all are warm at once when measured
        argv = [sys.executable, __file__, "--one", str(n), "--idle", str(idle), "--timeout", str(timeout)]
        with tempfile.TemporaryFile(mode="w+") as log:
            # The child bounds itself with trio.fail_after(timeout); its lines are passed on as they come.
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True) as child_process:
                assert child_process.stdout is not None
                for line in child_process.stdout:
                    print(line, end="", flush=True)
                    figure = json.loads(line)
                    if figure["figure"] == "registered_daemon_pss_mib":
                        start_pss[n] = figure["value"]
            if child_process.returncode:
                log.seek(0)
                emit(n, "failed", child_process.returncode, "exit status", stderr=log.read()[-2000:])
    if len(start_pss) >= 2:
        low, high = min(start_pss), max(start_pss)
        slope = (start_pss[high] - start_pss[low]) / (high - low)
        emit(high, "daemon_pss_per_agent_mib", slope, "MiB", between=[low, high])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per N, at most")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args.one, args.idle, args.timeout)
    else:
        parent(args.agents, args.timeout)
