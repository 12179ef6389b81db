"""Agents' cgroups, one JSON line per figure: what joining a cgroup adds to starting a
sandbox, how long an OOM kill takes to bring the whole agent down, and what reading
an agent's usage costs. Needs root, bubblewrap and cgroups. Usage::

    .venv/bin/python bench/cgroups.py [--sandboxes 30]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.containers import ContainerSpec, Limits
from hyperhive_core.containers.bwrap import BwrapBackend, BwrapSection
from hyperhive_core.containers.cgroups import Cgroups, ContainersSection, hive_cgroups
from hyperhive_core.containers.uids import AgentUids, m005_agent_uids
from hyperhive_core.store import Store

UIDS = 62700
CAPPED = Limits(memory_max_mb=64, memory_high_mb=48, pids_max=64, cpu_weight=100)


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "cgroups", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


async def agent(backend: BwrapBackend, root: Path, name: str, limits: Limits | None) -> ContainerSpec:
    spec = ContainerSpec(name, "agent", root / "agents" / name / "state", root / "run" / name, limits=limits)
    await backend.start(spec)
    spec.socket_dir.mkdir(parents=True, mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(spec.socket_dir / "agent.sock"))
    listener.listen()
    return spec


async def starts(backend: BwrapBackend, spec: ContainerSpec, count: int) -> list[float]:
    """Milliseconds from exec to the sandbox's exit, for ``true``."""
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        sandbox = await backend.exec(spec, ["true"], {})
        await sandbox.wait()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


async def oom_takedown(backend: BwrapBackend, spec: ContainerSpec) -> float:
    """Milliseconds from starting a runaway allocation to the agent's other sandbox being gone."""
    bystander = await backend.exec(spec, ["sleep", "60"], {})
    began = time.perf_counter()
    hog = await backend.exec(spec, ["sh", "-c", "tail /dev/zero"], {})
    with trio.fail_after(30):
        await hog.wait()
        await bystander.wait()
    return (time.perf_counter() - began) * 1000


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "state"
        root.mkdir(mode=0o700)
        store = Store(root / "hive.db")
        store.migrate({"core": [m005_agent_uids]})
        cgroups, why = hive_cgroups(ContainersSection(), root)
        if cgroups is None:
            raise SystemExit(f"no cgroups here: {why}")
        section = BwrapSection(uid_range_start=UIDS, uid_range_size=10, stop_timeout_seconds=1.0)
        uids = AgentUids(store, section.uid_range_start, section.uid_range_size)
        plain = BwrapBackend(section, uids, root)
        capped = BwrapBackend(section, uids, root, cgroups)
        async with trio.open_nursery() as nursery:
            await nursery.start(cgroups.watch_oom)
            free_spec = await agent(plain, root, "free", None)
            capped_spec = await agent(capped, root, "capped", CAPPED)
            await starts(plain, free_spec, 3)  # warm the page cache
            without, with_ = [], []
            for _ in range(count):  # interleaved, so drift on a noisy host hits both alike
                without += await starts(plain, free_spec, 1)
                with_ += await starts(capped, capped_spec, 1)
            emit("sandbox_start_median", statistics.median(without), "ms", cgroups=False, n=count)
            emit("sandbox_start_median", statistics.median(with_), "ms", cgroups=True, n=count, via=cgroups.describe())
            emit("oom_whole_agent_down", await oom_takedown(capped, capped_spec), "ms", memory_max_mb=64)
            usage_us = usage_cost(cgroups, "capped")
            emit("usage_read", usage_us, "us")
            await plain.stop(free_spec)
            await capped.stop(capped_spec)
            nursery.cancel_scope.cancel()
        await capped.close()
        store.close()


def usage_cost(cgroups: Cgroups, agent: str, rounds: int = 1000) -> float:
    cgroup = cgroups.get(agent)
    assert cgroup is not None
    began = time.perf_counter()
    for _ in range(rounds):
        cgroup.usage()
    return (time.perf_counter() - began) / rounds * 1e6


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandboxes", type=int, default=30, help="sandboxes started for each median")
    trio.run(main, parser.parse_args().sandboxes)
