"""What the dashboard's request hardening costs, one JSON line per figure.

- JSON bodies: ``json.loads`` of a 4 MiB body (the most the dashboard takes), and
  the nesting check the dashboard adds, for flat, string-heavy and 60-deep bodies;
  how fast a 100,000-deep body is refused.
- Wrong tokens: who a loopback client is (its uid, from sock_diag and from the
  fallback, ``/proc/net/tcp``) with ``--sockets`` more connections open on this
  host, and one limiter decision with 4096 clients remembered.

Usage::

    .venv/bin/python bench/login_guard.py [--sockets 2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any

from hyperhive_web.jsonbody import MAX_DEPTH, TooDeep, loads, nesting_exceeds
from hyperhive_web.limiter import (
    CLIENTS_MAX,
    PROC_NET,
    FailureLimiter,
    TooManyAttempts,
    client_key,
    diag_peer_uid,
    proc_peer_uid,
)

BODY_BYTES = 4 * 1024 * 1024
PROC_TCP = PROC_NET / "tcp"


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "login_guard", "figure": figure, "value": round(value, 3), "unit": unit, **extra}))


def best_of(runs: int, work: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``work``, in ms, each after a full collection."""
    timings = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    return min(timings)


def bench_json() -> None:
    def fill(item: str) -> str:
        return "[" + ",".join([item] * (BODY_BYTES // (len(item) + 1))) + "]"

    bodies = {
        "flat": fill("[]"),
        "strings": fill('"[{[{ just text, brackets in strings do not count }]}]"'),
        "deep60": fill("[" * 59 + "]" * 59),
    }
    for name, body in bodies.items():
        emit(f"json_{name}_parse", best_of(3, lambda body=body: json.loads(body)), "ms", bytes=len(body))
        check = best_of(3, lambda body=body: nesting_exceeds(body, MAX_DEPTH))
        emit(f"json_{name}_depth_check", check, "ms", bytes=len(body))
    deep = "[" * 100_000 + "]" * 100_000
    emit("json_100000_deep_refused", best_of(3, lambda: _refused(deep)), "ms", bytes=len(deep))


def _refused(body: str) -> None:
    try:
        loads(body)
    except TooDeep:
        return
    raise AssertionError("a 100,000-deep body was accepted")


def bench_client_key(sockets: int) -> None:
    with ExitStack() as stack:
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=sockets + 1))
        for _ in range(sockets):
            stack.enter_context(socket.create_connection(server.getsockname()))
            stack.enter_context(server.accept()[0])
        client = stack.enter_context(socket.create_connection(server.getsockname()))
        accepted = stack.enter_context(server.accept()[0])
        peer, own = client.getsockname(), accepted.getsockname()
        assert client_key(peer, own).startswith("loopback uid ")
        on_host = len(PROC_TCP.read_text().splitlines()) - 1
        for name, lookup in (("diag", diag_peer_uid), ("proc", proc_peer_uid)):
            samples = []
            for _ in range(200):
                started = time.perf_counter()
                lookup(peer, own)
                samples.append((time.perf_counter() - started) * 1000)
            emit(f"peer_uid_{name}_p50", statistics.median(samples), "ms", tcp_sockets_on_host=on_host)
            emit(f"peer_uid_{name}_max", max(samples), "ms", tcp_sockets_on_host=on_host)


def bench_limiter() -> None:
    limiter = FailureLimiter(10)
    for client in range(CLIENTS_MAX):
        limiter.acquire(f"10.{client // 65536}.{client // 256 % 256}.{client % 256}")
    rounds = 100_000
    started = time.perf_counter()
    for attempt in range(rounds):
        with suppress(TooManyAttempts):
            limiter.acquire(f"192.0.2.{attempt % 200}")
    emit("limiter_decision", (time.perf_counter() - started) / rounds * 1e6, "us", remembered=len(limiter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2000, help="extra loopback connections while looking up a uid")
    args = parser.parse_args()
    bench_json()
    bench_client_key(args.sockets)
    bench_limiter()


if __name__ == "__main__":
    main()
