"""A real daemon killed with -9 amid retrying host-socket clients, one JSON line per figure.

Clients send over the host socket with the CLI's own client: a fresh idempotency
key per message, retrying as ``hyperhive send`` does while the daemon is down or
the answer is lost. The daemon dies holding one send stored and unanswered, with
the others in flight, and is started again. A consumer in the daemon leases and
acks every message. The run is the one tests/test_broker_crash.py checks: it
prints how many sends were lost, stored twice or redelivered after their ack (all
should be 0), and the send rate, restart included. Usage::

    .venv/bin/python bench/broker_crash.py [--dir DIR] [--clients 8] [--sends 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

# The daemon and its clients are the crash test's own, so the figures and the test measure one run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_broker_crash import kill_9_amid_sends


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "broker_crash", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


async def main(directory: Path, clients: int, sends: int, rounds: int) -> None:
    runs = []
    for round_ in range(rounds):
        workdir = directory / f"round-{round_}"
        workdir.mkdir()
        runs.append(await kill_9_amid_sends(workdir, clients, sends, hold_at=sends // 3))
    total = clients * sends
    for figure in ("lost", "duplicates", "redelivered_after_ack"):
        counts = [getattr(run, figure) for run in runs]
        emit(figure, max(counts), "messages", rounds=counts, sends=total, target=0)
    rates = [total / run.seconds for run in runs]
    emit(
        "sends_per_s_with_kill_9_and_restart",
        statistics.median(rates),
        "sends/s",
        rounds=[round(rate) for rate in rates],
        clients=clients,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where the state dirs go (default: a temporary directory)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--sends", type=int, default=1500, help="sends per client")
    parser.add_argument("--rounds", type=int, default=3, help="runs, each with its own kill and restart")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hyperhive-bench-", dir=args.dir))
    try:
        trio.run(main, workdir, args.clients, args.sends, args.rounds)
    finally:
        shutil.rmtree(workdir)
