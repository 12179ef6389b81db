"""The allow-list checker's cost per Bash call, one JSON line per figure.

Claude Code runs the checker as a process before every Bash call of an allow-listed
agent, and lets the call through if the hook times out, so its time matters. Each
figure is the median (and slowest) of whole checker runs, process start included,
for one kind of command. Usage::

    .venv/bin/python bench/allowlist.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHECKER = Path(__file__).resolve().parent.parent / "plugins" / "allowlist"
CONFIG = {
    "bash": ["git *", "sort *", "sed *", "cp *", "tar *", "curl *", "ls *", "echo *"],
    "writable": ["/state/**", "/tmp/**"],
}
COMMANDS = {
    "plain": "ls -la /state",
    "git": "git -C /state/repo log --oneline -20",
    "git_output_denied": "git log -1 --outp=/state/.bashrc",
    "sed_script": "sed -e 's/a/b/g;/x/d' -e '$w /tmp/last' /state/in",
    "compound_40_parts": " && ".join(["cp /state/a /tmp/b", "sort -o /tmp/c /state/d"] * 20),
    "long_line_60k": "echo " + "x" * 60_000,
}


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "allowlist", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def run_once(command: str) -> tuple[float, bool]:
    event = json.dumps({"tool_name": "Bash", "tool_input": {"command": command}, "cwd": "/state"})
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-I", "-m", "hyperhive_allowlist.check", json.dumps(CONFIG)],
        input=event,
        capture_output=True,
        text=True,
        cwd=CHECKER,
        timeout=60,
        check=True,
    )
    return (time.perf_counter() - started) * 1000, bool(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    for name, command in COMMANDS.items():
        samples, denied = [], False
        for _ in range(args.runs):
            elapsed, denied = run_once(command)
            samples.append(elapsed)
        emit(f"{name}_median", statistics.median(samples), "ms", runs=args.runs, denied=denied)
        emit(f"{name}_max", max(samples), "ms", runs=args.runs)


if __name__ == "__main__":
    main()
