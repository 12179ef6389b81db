"""One hive on two hosts (two daemons in this process, a local three-node R3 cluster), one JSON line per figure.

- a host command about an agent on this host, and about one on the other host
  (forwarded over NATS request/reply and answered there): p50 and p95;
- ``status`` on a host, which asks the other host for its agents: p50 and p95;
- an event published on one host until the other host's bus has it: p50 and p95.

Usage::

    .venv/bin/python bench/cluster_hosts.py [--dir DIR] [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from hyperhive_core import host_commands
from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import make_plugin_manager
from hyperhive_core.testing import Script, running_hive


def emit(figure: str, samples: list[float], unit: str = "ms") -> None:
    ordered = sorted(samples)
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        line = {
            "bench": "cluster_hosts",
            "figure": f"{figure} {name}",
            "value": round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3),
            "unit": unit,
            "samples": len(ordered),
            "load": os.getloadavg()[0],
        }
        print(json.dumps(line), flush=True)


async def timed(samples: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    taken = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        taken.append((time.perf_counter() - start) * 1000)
    return taken


async def event_latency(a: Hive, b: Hive, samples: int) -> list[float]:
    taken = []
    async with b.events.subscribe("hive") as events:
        for n in range(samples):
            start = time.perf_counter()
            a.events.publish("hive", "note", text=f"bench {n}")
            with trio.fail_after(10):
                async for event in events:
                    if event.data.get("text") == f"bench {n}":
                        break
            taken.append((time.perf_counter() - start) * 1000)
    return taken


async def main(root: Path, samples: int) -> None:
    cluster = LocalCluster(root / "nats")
    cluster.start()
    try:
        idle = Script()
        idle.otherwise("nothing to do")
        async with AsyncExitStack() as stack:
            hives = []
            for name, agents in (("a", {}), ("b", {"bob": {}})):
                (root / name).mkdir()
                hives.append(
                    await stack.enter_async_context(
                        running_hive(
                            root / name,
                            make_plugin_manager([]),
                            idle,
                            agents=agents,
                            broker={"backend": "jetstream"},
                            jetstream={"urls": cluster.urls},
                            cluster={"host": name},
                        )
                    )
                )
            a, b = hives
            emit("host command, agent on this host", await timed(samples, lambda: host_commands.agent(b, "bob")))
            emit(
                "host command, agent on the other host",
                await timed(samples, lambda: host_commands.agent(b, "manager")),
            )
            emit("status across two hosts", await timed(samples, lambda: host_commands.status(b)))
            emit("event from one host to the other", await event_latency(a, b, samples))
    finally:
        cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="Where the cluster and the hosts keep their state (default: a temp)")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        trio.run(main, args.dir, args.samples)
    else:
        with tempfile.TemporaryDirectory() as directory:
            trio.run(main, Path(directory), args.samples)
