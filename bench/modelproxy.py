"""Time to first byte through the daemon's model proxy, against straight to the model's server.

One streamed ``POST /v1/messages`` after another, each on a kept-alive connection,
to the rehearsal model (on loopback): straight to it; through the proxy's unix
socket (``model.sock``, as the forwarder reaches it); and through the forwarder
(``forward.py``, TCP on loopback) in front of that, as the CLI in a sandbox does.
Also: the forwarder's start, against a bare ``python -I -S``. One JSON line per
figure. Usage::

    .venv/bin/python bench/modelproxy.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import trio

from hyperhive_core import forward
from hyperhive_core.modelproxy import ModelProxy, Upstream
from hyperhive_core.rehearsal import RehearsalServer, parse_scenario

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "Hello from the bench." }]\n'
BODY = json.dumps({"model": "haiku", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()


def emit(figure: str, samples: list[float], unit: str = "ms", **extra: Any) -> None:
    ordered = sorted(samples)
    line = {
        "bench": "modelproxy",
        "figure": figure,
        "value": round(statistics.median(ordered), 3),
        "unit": unit,
        "p90": round(ordered[int(len(ordered) * 0.9)], 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "n": len(ordered),
        **extra,
    }
    print(json.dumps(line), flush=True)


async def first_bytes(stream: trio.abc.Stream, target: str, requests: int) -> list[float]:
    """Milliseconds from each request's last byte out to its response's first byte in."""
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method="POST",
        target=target,
        headers=[("host", "127.0.0.1"), ("content-type", "application/json"), ("content-length", str(len(BODY)))],
    )
    samples = []
    for _ in range(requests):
        await stream.send_all(conn.send(head) + conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage()))
        sent = time.perf_counter()
        first = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                first = first or time.perf_counter()
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                break
        samples.append((first - sent) * 1000)
        conn.start_next_cycle()
    return samples[requests // 10 :]  # the first ones warm connections and caches up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def bench(requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hyperhive-bench-") as tmp:
        sock = Path(tmp) / "model.sock"
        model = RehearsalServer(parse_scenario(SCENARIO, "bench"))
        async with trio.open_nursery() as nursery:
            await nursery.start(model.serve)
            proxy = ModelProxy(lambda agent: Upstream.from_url(model.base_url_for(agent)), lambda agent: [])
            await nursery.start(proxy.serve)
            await proxy.open("alice", sock)

            async with await trio.open_tcp_stream("127.0.0.1", model.port) as direct:
                emit("ttfb_direct_ms", await first_bytes(direct, "/agents/alice/v1/messages", requests))
            async with await trio.open_unix_socket(str(sock)) as proxied:
                emit("ttfb_proxy_socket_ms", await first_bytes(proxied, "/v1/messages", requests))
            port = free_port()
            child = await trio.lowlevel.open_process(forward.command(str(sock), ["sleep", "600"], port=port))
            try:
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                        break
                    except OSError:
                        await trio.sleep(0.01)
                async with stream:
                    emit("ttfb_forwarder_and_proxy_ms", await first_bytes(stream, "/v1/messages", requests))
            finally:
                child.kill()
                await child.wait()
            nursery.cancel_scope.cancel()


def start_times(runs: int) -> None:
    """Wall time to start the forwarder and exec ``true``, against a bare ``python -I -S -c pass``."""
    with tempfile.TemporaryDirectory(prefix="hyperhive-bench-") as tmp:
        for figure, argv in (
            ("python_start_ms", lambda: [sys.executable, "-I", "-S", "-c", "pass"]),
            # A port of its own each time: outside a sandbox, the last one's child lets go within a second.
            ("forwarder_start_ms", lambda: forward.command(str(Path(tmp) / "model.sock"), ["true"], port=free_port())),
        ):
            samples = []
            for _ in range(runs):
                command = argv()
                started = time.perf_counter()
                subprocess.run(command, check=True)
                samples.append((time.perf_counter() - started) * 1000)
            emit(figure, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per path (default 300)")
    parser.add_argument("--starts", type=int, default=30, help="forwarder starts to time (default 30)")
    args = parser.parse_args()
    trio.run(bench, args.requests)
    start_times(args.starts)


if __name__ == "__main__":
    main()
