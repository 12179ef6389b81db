"""The seccomp filter and the uid-range registry, one JSON line per figure: compiling the
filter (once per daemon), handing a sandbox its copy (every start), a whole sandbox start
with it, what loading it costs an nspawn exec (the loader's Python start), and claiming a
uid range among other hives' claims. Needs root and bubblewrap. Usage::

    .venv/bin/python bench/seccomp.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.containers import ContainerSpec, Limits, seccomp
from hyperhive_core.containers.bwrap import BwrapBackend, BwrapSection
from hyperhive_core.containers.uids import AgentUids, claim_uid_range, m005_agent_uids
from hyperhive_core.store import Store

UIDS = 62750
LIMITS = Limits(memory_max_mb=0, memory_high_mb=0, pids_max=0, cpu_weight=100, tmp_size_mb=256)


def emit(figure: str, samples: list[float], unit: str, **extra: Any) -> None:
    line = {
        "bench": "seccomp",
        "figure": figure,
        "median": round(statistics.median(samples), 3),
        "max": round(max(samples), 3),
        "unit": unit,
        "n": len(samples),
        **extra,
    }
    print(json.dumps(line), flush=True)


def timed(fn: Callable[[], object], rounds: int, scale: float = 1000) -> list[float]:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * scale)
    return samples


def handed_over(program: bytes) -> None:
    os.close(seccomp.program_fd(program))


def run(program: bytes, *, loaded: bool) -> None:
    """``true``, as an nspawn exec runs it (under the loader) or plainly; a fresh copy each
    time, as each exec gets: the loader reads its copy to the end."""
    fd = seccomp.program_fd(program)
    try:
        argv = seccomp.loader_argv(fd, ["/bin/true"]) if loaded else ["/bin/true"]
        subprocess.run(argv, pass_fds=[fd], check=True)
    finally:
        os.close(fd)


async def sandbox_starts(root: Path, rounds: int) -> list[float]:
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    section = BwrapSection(uid_range_start=UIDS, uid_range_size=10)
    backend = BwrapBackend(section, AgentUids(store, UIDS, 10), root)
    spec = ContainerSpec("bench", "agent", root / "agents/bench/state", root / "run/bench", limits=LIMITS)
    await backend.start(spec)
    spec.socket_dir.mkdir(parents=True, mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(spec.socket_dir / "agent.sock"))
    listener.listen()
    samples = []
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            sandbox = await backend.exec(spec, ["true"], {})
            await sandbox.wait()
            samples.append((time.perf_counter() - began) * 1000)
    finally:
        await backend.stop(spec)
        listener.close()
        store.close()
    return samples


def claims(root: Path, others: int, rounds: int) -> list[float]:
    registry = root / "uid-ranges"
    held = [claim_uid_range(100_000 + 10 * n, 10, root / f"hive-{n}", registry) for n in range(others)]
    try:
        return timed(lambda: claim_uid_range(50_000, 10, root / "measured", registry).release(), rounds)
    finally:
        for claim in held:
            claim.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    program = seccomp.compile_program()
    emit("compile the filter (once per daemon)", timed(seccomp.compile_program, rounds), "ms", bytes=len(program))
    emit("hand a sandbox its sealed copy", timed(lambda: handed_over(program), rounds * 10, 1e6), "us")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "state"
        root.mkdir(mode=0o700)
        emit("sandbox start to exit, `true`, filtered", trio.run(sandbox_starts, root, rounds), "ms")
        emit("`true`, unfiltered", timed(lambda: run(program, loaded=False), rounds), "ms")
        loaded = timed(lambda: run(program, loaded=True), rounds)
        emit("`true` through the nspawn exec's loader", loaded, "ms", python=sys.executable)
        for others in (0, 50):
            emit("claim a uid range", claims(Path(tmp), others, rounds), "ms", live_claims=others)


if __name__ == "__main__":
    main()
