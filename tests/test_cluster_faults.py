"""One hive on several hosts, as the operator runs it: a real ``hyperhive up`` per host (each its
own state dir, uid range and dashboard port) on one real three-node JetStream cluster, then
faults: a host killed with SIGKILL mid-turn, and brought back."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_hosts import placement_ready

from hyperhive_core.hostclient import request
from hyperhive_core.testing import Script, needs_claude

# A loaded machine: the cluster may take a while to elect its leaders at first.
JETSTREAM = {"ack_wait_seconds": 5.0, "heartbeat_seconds": 1.0, "request_timeout_seconds": 20.0}
CLUSTER = {"heartbeat_seconds": 0.5, "down_after_seconds": 3.0}


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, list) else "[" + ", ".join(map(json.dumps, value)) + "]"


class HostDaemon:
    """One host of the hive: its config, its ``hyperhive up``, and its CLI."""

    def __init__(self, root: Path, name: str, urls: list[str], env: dict[str, str], hyperhive: str) -> None:
        self.name, self.urls, self.env, self.hyperhive = name, urls, env, hyperhive
        self.dir = root / name
        self.dir.mkdir()
        self.config = self.dir / "hyperhive.toml"
        self.process: subprocess.Popen[bytes] | None = None

    def configure(
        self, script: Script, agents: dict[str, dict[str, Any]], backend: str = "process", **sections: dict[str, Any]
    ) -> None:
        (self.dir / "scenario.toml").write_text(str(script))
        tables = {
            "hive": {"state_dir": str(self.dir / "state"), "container_backend": backend},
            "claude": {"rehearsal_scenario": str(self.dir / "scenario.toml"), "api_error_backoff_seconds": 0.2},
            "broker": {"backend": "jetstream"},
            "jetstream": {"urls": self.urls, **JETSTREAM},
            "cluster": {"host": self.name, **CLUSTER},
            "web": {"port": 0},
            **sections,
            **{f"agents.{agent}": config for agent, config in agents.items()},
        }
        self.config.write_text(
            "".join(
                f"[{table}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in keys.items()) + "\n"
                for table, keys in tables.items()
            )
        )

    def up(self) -> None:
        with (self.dir / "daemon.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [self.hyperhive, "-c", str(self.config), "up"], env=self.env, stdout=log, stderr=log
            )
        until(lambda: self.process.poll() is not None or self.answers(), 90, f"host {self.name} to start")
        assert self.process.poll() is None, (self.dir / "daemon.log").read_text()[-3000:]

    def answers(self) -> bool:
        return self.cli("status", "--json", check=False).returncode == 0

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.hyperhive, "-c", str(self.config), *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert not check or result.returncode == 0, result.stderr
        return result

    def first_event(self, matches: Callable[[dict[str, Any]], bool], *args: str, seconds: float = 60) -> dict[str, Any]:
        """The first event ``hyperhive events --json ARGS`` prints that ``matches``."""
        command = [self.hyperhive, "-c", str(self.config), "events", "--json", *args]
        with subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, text=True) as follow:
            timer = threading.Timer(seconds, follow.kill)  # a quiet stream ends too
            timer.start()
            try:
                assert follow.stdout is not None
                for line in follow.stdout:
                    if matches(event := json.loads(line)):
                        return event
                raise AssertionError(f"no matching event within {seconds} s")
            finally:
                timer.cancel()
                follow.kill()

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """A GET on this host's dashboard (a POST of ``body``, if given), with the operator token, as a
        script uses it; a refusal raises ``urllib.error.HTTPError``."""
        return json.loads(self.page(path, None if body is None else json.dumps(body).encode()))

    def page(self, path: str, data: bytes | None = None) -> bytes:
        """What this host's dashboard answers at ``path`` (a POST of JSON ``data``, if given)."""
        web = self.dir / "state" / "web"
        url = json.loads((web / "dashboard.json").read_text())["url"]
        headers = {"Authorization": f"Bearer {(web / 'operator-token').read_text().strip()}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def request(self, cmd: str, **arguments: Any) -> Any:
        """``cmd`` on this host's socket; a refusal raises ``HostCommandError``."""
        return request(self.dir / "state" / "host.sock", cmd, **arguments)


def until(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``condition`` every 0.2 s until it is true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"waited {seconds} s for {what}")


@pytest.fixture
def hosts(tmp_path, nats_cluster, clean_env, hyperhive) -> Iterator[Callable[[str], HostDaemon]]:
    placement_ready(nats_cluster.urls)
    started: list[HostDaemon] = []

    def make(name: str) -> HostDaemon:
        daemon = HostDaemon(tmp_path, name, nats_cluster.urls, clean_env, hyperhive)
        started.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in started:
            daemon.stop()


def agent_rows(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {agent["name"]: agent for agent in status["agents"]}


@needs_claude
@pytest.mark.slow
def test_a_host_killed_mid_turn_shows_down_and_its_agents_messages_wait_for_it(hosts):
    a, b = hosts("a"), hosts("b")
    idle = Script()
    idle.otherwise("nothing to do")
    a.configure(idle, {})
    slow = Script()
    slow.on("bob", "work").reply("working", delay=120)  # mid-turn when the host dies
    b.configure(slow, {"bob": {}})
    a.up()
    b.up()

    # Any host's CLI spawns on another host, and a name another host holds is refused, naming it.
    assert a.cli("spawn", "dora", "--host", "b").stdout == "spawned dora on b\n"
    assert agent_rows(b.status())["dora"]["host"] == "b"
    taken = a.cli("spawn", "bob", check=False)
    assert "'bob' is taken hive-wide: an agent of that name is placed on host 'b'" in taken.stderr
    unknown = a.cli("spawn", "eve", "--host", "c", check=False)
    assert "no host named 'c' in this hive; its hosts: a, b" in unknown.stderr

    a.cli("send", "bob", "work one")
    until(lambda: agent_rows(a.status())["bob"]["state"] == "thinking", 60, "bob to be mid-turn, seen from a")
    b.kill_9()

    # Meanwhile a still takes messages for bob: they wait in bob's inbox.
    a.cli("send", "bob", "work two")

    def shows_b_down() -> dict[str, Any] | None:
        state = a.api("/api/state")
        return None if next(h for h in state["cluster"]["hosts"] if h["name"] == "b")["up"] else state

    state = until(shows_b_down, 30, "a's dashboard to show host b down")
    bob = agent_rows(state)["bob"]
    assert (bob["host"], bob["state"]) == ("b", "down"), bob
    assert "host 'b'" in bob["detail"]
    assert bob["inbox_depth"] >= 1
    assert agent_rows(state)["manager"]["host"] == "a"
    text = a.cli("status").stdout.splitlines()
    assert "host       a, one of 2" in text
    [b_line] = [line for line in text if line.split()[:2] == ["host", "b"]]
    assert b_line.split()[2:4] == ["DOWN", "2"], b_line  # bob and dora
    # A command about bob says his host is down, naming it.
    refused = a.cli("pause", "bob", check=False)
    assert refused.returncode != 0
    assert "'bob' runs on host 'b', which is down" in refused.stderr

    # b comes back (its model answers quickly now): both messages reach bob, once.
    quick = Script()
    quick.on("bob", "work").call("send", {"to": "operator", "body": "bob finished"}).reply("done")
    b.configure(quick, {"bob": {}})
    b.up()
    until(lambda: "bob finished" in a.cli("debug", "recv").stdout, 90, "bob's answer after his host came back")
    until(lambda: agent_rows(a.status())["bob"]["inbox_depth"] == 0, 60, "bob's inbox to empty")
    hosts_seen = {h["name"]: h["up"] for h in a.status()["cluster"]["hosts"]}
    assert hosts_seen == {"a": True, "b": True}
