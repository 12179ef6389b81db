"""Dashboard latency, one JSON line per figure (docs/architecture.md §12, docs/dashboard.md#performance).

- SSE fan-out: N browsers hold ``GET /api/events`` open; the daemon publishes events
  stamped with a monotonic clock; each client notes when it got each one. p50/p99
  of publish → received, at 200 and 1,000 clients.
- ``GET /api/state`` with 100 agents and a million stored messages: p50/p99 of
  sequential requests.

Every figure carries the machine's 1-minute load average when it was taken and its
number of cores: on a shared machine the load says more about a tail than the code.
The clients run in a child process (this script with ``--clients`` or
``--time-state``), so they do not share the daemon's event loop; CLOCK_MONOTONIC is
the same for both. A thousand streams need a thousand file descriptors on each side:
both processes raise their soft limit (``ulimit -n``) to what they need, up to the
hard limit, and stop with what to do when the hard limit is lower. Usage::

    .venv/bin/python bench/dashboard.py [--clients 200 1000] [--events 200] [--messages 1000000]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from hyperhive_web import dashboard_of

from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import make_plugin_manager

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
DONE = "bench-done"


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    extra |= {"load_1m": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    print(json.dumps({"bench": "dashboard", "figure": figure, "value": round(value, 2), "unit": unit, **extra}))


def allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files to ``count`` plus room for the rest, if below."""
    wanted = count + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        sys.exit(f"{count} streams need {wanted} open files, and the hard limit is {hard}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- the clients' side (a child process) ---------------------------------------------------

SENT = re.compile(rb'"sent": ([0-9.]+)')
CONNECTING = 50


def run_clients(url: str, token: str, count: int) -> None:
    """Hold ``count`` event streams open; print "ready", then every latency (ms) and how many reads
    brought events, once DONE arrives.

    One plain ``selectors`` loop reads every stream, far cheaper per read than an event
    loop's task per stream, so the figure is the daemon's, not this process's: each
    client notes the time a read returns, before looking at the bytes, and reads them no
    further than it must. At most ``CONNECTING`` streams are still starting at once: a
    thousand connecting at the same moment would overflow the dashboard's listen
    backlog (hypercorn's default, 100) and be reset.
    """
    allow_open_files(count)
    parts = urlsplit(url)
    request = (
        f"GET /api/events HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()
    unread: dict[socket.socket, bytes] = {}
    latencies: list[float] = []
    reads = started = live = done = 0
    while done < count:
        while started < count and started - live < CONNECTING:
            stream = socket.create_connection((parts.hostname, parts.port))
            stream.sendall(request)
            stream.setblocking(False)
            selector.register(stream, selectors.EVENT_READ)
            unread[stream] = b""
            started += 1
        for key, _ in selector.select(timeout=1):
            stream = key.fileobj
            assert isinstance(stream, socket.socket)
            data = stream.recv(65536)
            now = time.monotonic()
            if not data:
                sys.exit("a stream ended before the bench did")
            complete, _, unread[stream] = (unread[stream] + data).rpartition(b"\n\n")  # whole SSE messages only
            if b"event: live" in complete:
                live += 1
                if live == count:
                    print("ready", flush=True)
            stamps = SENT.findall(complete)
            latencies.extend((now - float(sent)) * 1000 for sent in stamps)
            reads += bool(stamps)
            if DONE.encode() in complete:
                selector.unregister(stream)
                stream.close()
                done += 1
    print(json.dumps({"latencies": latencies, "reads": reads}), flush=True)


def time_requests(url: str, token: str, path: str, count: int) -> None:
    """Print the time of ``count`` sequential GETs of ``path``, in ms, after one warm-up."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    headers = {"Authorization": f"Bearer {token}"}
    timings = []
    for _ in range(count + 1):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        reply = connection.getresponse()
        body = reply.read()
        timings.append((time.perf_counter() - started) * 1000)
        assert reply.status == 200, body
    print(json.dumps(timings[1:]), flush=True)


# -- the daemon's side -------------------------------------------------------------------------


async def fanout(hive: Hive, clients: int, events: int, rate: float) -> None:
    web = dashboard_of(hive)
    child = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--streams", str(clients), "--url", web.url, "--token", web.token],
        stdout=subprocess.PIPE,
    )
    lines = LineReader(child.stdout)
    assert await lines.next() == "ready"
    await trio.sleep(1)
    cpu = time.process_time()
    for index in range(events):
        hive.events.publish("manager", "note", text="bench", seq=index, sent=time.monotonic())
        await trio.sleep(1 / rate)
    await trio.sleep(0.5)
    hive.events.publish("manager", "note", text=DONE)
    cpu = time.process_time() - cpu
    received = json.loads(await lines.next())
    latencies = received["latencies"]
    await child.wait()
    load = {"clients": clients, "events": events, "per_second": rate, "gc_frozen": gc.get_freeze_count() > 0}
    emit("sse_fanout_p50", statistics.median(latencies), "ms", **load)
    emit("sse_fanout_p99", percentile(latencies, 0.99), "ms", **load, delivered=len(latencies) / (clients * events))
    # What each delivery cost the daemon, and how many events a write carried: figures the load moves less.
    emit("sse_daemon_cpu_per_delivery", cpu * 1e6 / len(latencies), "us", **load)
    emit("sse_events_per_read", len(latencies) / max(1, received["reads"]), "events", **load)


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise RuntimeError("the client process ended early")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


async def api_state(hive: Hive, agents: int, messages: int, requests: int) -> None:
    while len(list(hive.agents)) < agents:
        await hive.spawn(f"agent-{len(list(hive.agents)):03d}")
    await hive.store.write(lambda db: store_messages(db, [agent.name for agent in hive.agents], messages))
    command = [sys.executable, __file__, "--time-state", str(requests), "--url", dashboard_of(hive).url]
    command += ["--token", dashboard_of(hive).token]
    cpu = time.process_time()
    child = await trio.run_process(command, capture_stdout=True)
    cpu = time.process_time() - cpu
    timings = json.loads(child.stdout)
    counts = {"agents": agents, "messages": messages, "requests": requests}
    emit("api_state_p50", statistics.median(timings), "ms", **counts)
    emit("api_state_p99", percentile(timings, 0.99), "ms", **counts)
    emit("api_state_daemon_cpu", cpu * 1000 / (requests + 1), "ms", **counts)  # with the warm-up request


def store_messages(db: Any, recipients: list[str], count: int) -> None:
    """A million messages as retention leaves them: delivered, a few still queued per agent, one in 10,000 dead."""
    now = time.time()
    rows = (
        (
            "operator",
            recipients[index % len(recipients)],
            "text",
            f"message {index}",
            now,
            "queued" if index >= count - 2 * len(recipients) else "dead" if index % 10_000 == 0 else "acked",
        )
        for index in range(count)
    )
    db.conn.executemany(
        "INSERT INTO messages (sender, recipient, kind, body, created_at, state) VALUES (?, ?, ?, ?, ?, ?)", rows
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "scenario.toml").write_text(SCENARIO)
        pm = make_plugin_manager(["web"])
        raw = {
            "hive": {"state_dir": str(root / "state"), "container_backend": "process"},
            "claude": {"rehearsal_scenario": str(root / "scenario.toml")},
            "web": {"port": 0},
            "events": {"subscriber_buffer": 10_000},
        }
        config = load_config(root / "hyperhive.toml", raw, config_schemas(pm))
        allow_open_files(max(args.clients, default=0))
        async with trio.open_nursery() as nursery:
            hive = await nursery.start(run_hive, config, pm)
            if not args.no_freeze_gc:
                gc.freeze()  # as `hyperhive up` does once started: full collections skip the startup heap
            for clients in args.clients:
                await fanout(hive, clients, args.events, args.rate)
            if args.messages:
                await api_state(hive, 100, args.messages, args.requests)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[200, 1000], help="streams per fan-out run")
    parser.add_argument("--events", type=int, default=200, help="events published per fan-out run")
    parser.add_argument("--rate", type=float, default=10, help="events published per second")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages stored for /api/state (0: skip it)")
    parser.add_argument("--requests", type=int, default=300, help="/api/state requests timed")
    parser.add_argument("--no-freeze-gc", action="store_true", help="skip the gc.freeze() the daemon does once started")
    parser.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--time-state", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.streams:
        run_clients(arguments.url, arguments.token, arguments.streams)
    elif arguments.time_state:
        time_requests(arguments.url, arguments.token, "/api/state", arguments.time_state)
    else:
        trio.run(main, arguments)
