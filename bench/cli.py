"""CLI start-up, one JSON line per figure: ``hyperhive send``, ``status`` and ``agents``
beside a bare ``python -c pass``; the bound is under 2x.

The bench starts a daemon (``hyperhive up``, every installed plugin, the process
backend, the rehearsal model) on a temporary state dir and pauses the manager, which
it sends to: a turn would run Claude Code and take CPU from the runs being timed.
Each round runs every command once, in turn, so a machine that slows down mid-run
slows them all alike; the ratios compare p50 with p50 and p99 with p99. ``kept``
goes through the click CLI, for comparison. Usage::

    .venv/bin/python bench/cli.py [--rounds 200] [--warmup 10]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hyperhive_core
from hyperhive_core.hostclient import DaemonNotRunning, request

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
HYPERHIVE = str(Path(sys.executable).with_name("hyperhive"))
BASELINE = "python"  # a bare ``python -c pass``


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "cli", "figure": figure, "value": round(value, 2), "unit": unit, **extra}), flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def start_daemon(root: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``hyperhive up`` on a fresh state dir under ``root``: the process, its config and host socket."""
    (root / "scenario.toml").write_text(SCENARIO)
    config = root / "hyperhive.toml"
    config.write_text(
        f'[hive]\nstate_dir = "{root / "state"}"\ncontainer_backend = "process"\n'
        f'[claude]\nrehearsal_scenario = "{root / "scenario.toml"}"\n[web]\nport = 0\n'
    )
    with (root / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen([HYPERHIVE, "--config", str(config), "up"], stdout=log, stderr=log)
    socket = root / "state" / "host.sock"
    deadline = time.monotonic() + 60
    while True:
        try:
            request(socket, "status")
            return daemon, config, socket
        except DaemonNotRunning:
            if daemon.poll() is not None or time.monotonic() > deadline:
                daemon.kill()
                sys.exit(f"the daemon did not start; its log:\n{(root / 'daemon.log').read_text()}")
            time.sleep(0.1)


def timed(argv: list[str]) -> tuple[float, float]:
    """Run ``argv``: its wall time and its CPU time (user + system), in ms."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.communicate()[1]  # it has exited: this only reads its stderr
    if child.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {errors.decode()}")
    return elapsed * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def main(rounds: int, warmup: int) -> None:
    # Byte-compiled, as an installed package is: with PYTHONDONTWRITEBYTECODE set,
    # every run would otherwise compile core's modules again.
    compileall.compile_dir(Path(hyperhive_core.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="hyperhive-bench-") as scratch:
        daemon, config, socket = start_daemon(Path(scratch))
        try:
            request(socket, "pause", agent="manager")
            cli = [HYPERHIVE, "--config", str(config)]
            commands = {
                BASELINE: [sys.executable, "-c", "pass"],
                "send": [*cli, "send", "manager", "a benchmark message"],
                "status": [*cli, "status"],
                "agents": [*cli, "agents"],
                "kept": [*cli, "kept"],
            }
            walls: dict[str, list[float]] = {name: [] for name in commands}
            cpus: dict[str, list[float]] = {name: [] for name in commands}
            for round_ in range(warmup + rounds):
                for name, argv in commands.items():
                    wall, cpu = timed(argv)
                    if round_ >= warmup:
                        walls[name].append(wall)
                        cpus[name].append(cpu)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()

    # CPU time is the figure a busy machine disturbs least; the bound is on wall time.
    base_p50, base_p99 = statistics.median(walls[BASELINE]), percentile(walls[BASELINE], 0.99)
    base_cpu = statistics.median(cpus[BASELINE])
    for name, times in walls.items():
        p50, p99, cpu = statistics.median(times), percentile(times, 0.99), statistics.median(cpus[name])
        path = {BASELINE: "python", "kept": "click"}.get(name, "quick")
        emit(f"{name}_p50", p50, "ms", rounds=rounds, path=path, cpu_p50_ms=round(cpu, 2))
        emit(f"{name}_p99", p99, "ms", rounds=rounds, path=path)
        if name != BASELINE:
            bound = {"target": 2.0} if path == "quick" else {}
            emit(f"{name}_ratio_p50", p50 / base_p50, "x", cpu_ratio_p50=round(cpu / base_cpu, 2), **bound)
            emit(f"{name}_ratio_p99", p99 / base_p99, "x", **bound)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs of each command first")
    args = parser.parse_args()
    main(args.rounds, args.warmup)
