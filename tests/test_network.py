"""Each sandbox in a network of its own: real bubblewrap, the real Claude Code CLI, real sockets on loopback.

The model API is reached only through the daemon's proxy, which adds the credential,
so no key is ever in a sandbox or in anyone's argv; everything else goes through the
same proxy under the agent's egress list, and each refused connection is reported.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import uuid
from pathlib import Path

import pytest
import trio
from test_bwrap import finish, needs_bwrap
from test_modelproxy import Origin

from hyperhive_core import host_commands
from hyperhive_core.containers import ContainerSpec
from hyperhive_core.containers.nspawn import (
    AgentProfile,
    Mounts,
    hand_over,
    nixos_host_settings,
    nspawn_argv,
    render_agent_nix,
)
from hyperhive_core.forward import PORT
from hyperhive_core.hive import Hive
from hyperhive_core.modelproxy import PLACEHOLDER_KEY
from hyperhive_core.rehearsal import RehearsalServer, parse_scenario
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

# Clear of a real hive's uids (61000 up) and of the other tests' ranges.
UIDS = {"uid_range_start": 63300, "uid_range_size": 10}
SANDBOXES = {"container_backend": "bwrap"}
QUIET = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""


async def run_inside(hive: Hive, agent: str, script: str) -> tuple[int, str, str]:
    """``sh -c script`` in a new sandbox of ``agent``, with the environment its session gets."""
    spec = hive.container_spec(agent)
    env = hive.session_env(agent, hive.backend.view(spec).state)
    return await finish(await hive.backend.exec(spec, ["sh", "-c", script], env))


def host_listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


@needs_bwrap
async def test_a_sandbox_has_only_its_own_loopback(make_pm, tmp_path):
    listener = host_listener()
    port = listener.getsockname()[1]
    probe = (
        "import os, socket\n"
        "print(sorted(name for _, name in socket.if_nameindex()), sorted(os.listdir('/run/hyperhive')))\n"
        "for host in ('127.0.0.1', 'localhost'):\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=5); print('reached the host')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    try:
        async with running_hive(tmp_path, make_pm(), QUIET, hive=SANDBOXES, bwrap=UIDS) as hive:
            with trio.fail_after(30):
                rc, out, err = await run_inside(hive, "manager", f"python3 -c {shlex.quote(probe)}")
        assert (rc, err) == (0, "")
        assert out.splitlines() == [
            "['lo'] ['agent.sock', 'model.sock']",
            "ConnectionRefusedError",  # the sandbox's own 127.0.0.1, where nothing listens
            "ConnectionRefusedError",
        ]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever got through to the host's
    finally:
        listener.close()


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "status").read_text().split("\nUid:\t", 1)[1].split()[0] == str(uid):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def read_all(pattern: str) -> dict[int, bytes]:
    """``/proc/*/<pattern>`` of every process this test may read, but its own."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                found[int(entry.name)] = (entry / pattern).read_bytes()
            except OSError:
                continue
    return found


@needs_claude
@needs_bwrap
@pytest.mark.slow
async def test_the_cli_takes_a_turn_through_the_proxy_and_no_key_is_ever_inside(make_pm, tmp_path, monkeypatch):
    secret = f"sk-ant-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    origin = Origin()
    look = (
        # cat's own environ: what the Bash tool's commands get (its shell exports them itself).
        "cat /proc/self/environ | tr '\\0' '\\n' | grep -E '^(ANTHROPIC|HTTPS?_PROXY)' | sort; "
        "curl -sS --noproxy '' --proxytunnel http://127.0.0.1:{port}/from-bash"
    )
    scenario = """
        [[agents.alice.rules]]
        when = "look around"
        steps = [
          { tool = "Bash", input = { command = {command}, description = "look" } },
          { tool = "send", input = { to = "operator", body = "{{result}}" } },
          { text = "done" },
        ]
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        command = json.dumps(look.format(port=origin.port))
        # The model checks the key as the real API does: a request without it is refused.
        model = RehearsalServer(parse_scenario(scenario.replace("{command}", command), "network.toml"), api_key=secret)
        await nursery.start(model.serve)
        async with running_hive(
            tmp_path,
            make_pm(),
            "",
            endpoint=model.base_url_for("alice"),
            agents={"alice": {"egress": [f"127.0.0.1:{origin.port}"]}},
            claude={"api_retries": 0},
            hive=SANDBOXES,
            bwrap=UIDS,
        ) as hive:
            with trio.fail_after(120):
                await hive.broker.send("operator", "alice", "look around")
                reply = await operator_reply(hive, "alice")
            # The session stays up between turns: look at it, and everything else, from the host.
            uid = await hive.backend.uids.lookup("alice")
            refused = hive.model_proxy.denied("alice")  # the CLI itself asks for nothing else
            inside = processes_of(uid)
            environs = {pid: environ for pid, environ in read_all("environ").items() if pid in inside}
            cmdlines = read_all("cmdline")
        nursery.cancel_scope.cancel()
    assert reply.splitlines() == [
        f"ANTHROPIC_API_KEY={PLACEHOLDER_KEY}",
        f"ANTHROPIC_BASE_URL=http://127.0.0.1:{PORT}",
        f"HTTPS_PROXY=http://127.0.0.1:{PORT}",
        f"HTTP_PROXY=http://127.0.0.1:{PORT}",
        json.dumps({"method": "GET", "target": "/from-bash", "size": 0, "sha256": origin.seen[0].sha256}),
    ]
    assert model.requests, "the CLI never reached the model"
    assert refused == []
    assert {(request.status, request.agent) for request in model.requests} == {(200, "alice")}
    # The sandbox's processes (bwrap, claude, the forwarder, the tools): none has the key.
    assert any(PLACEHOLDER_KEY.encode() in environ for environ in environs.values())
    assert not [pid for pid, environ in environs.items() if secret.encode() in environ]
    # And no process on the host shows it in its argv, as ps would.
    assert not [pid for pid, cmdline in cmdlines.items() if secret.encode() in cmdline]


@needs_bwrap
async def test_egress_reaches_listed_targets_and_reports_the_rest(make_pm, tmp_path, caplog):
    async with trio.open_nursery() as nursery:
        origin = Origin()
        await nursery.start(origin.serve)
        allowed, refused = f"127.0.0.1:{origin.port}", "127.0.0.1:9"
        async with running_hive(
            tmp_path, make_pm(), QUIET, agents={"alice": {"egress": [allowed]}}, hive=SANDBOXES, bwrap=UIDS
        ) as hive:
            curl = "curl -sS --noproxy '' --max-time 20"
            script = (
                f"{curl} --proxytunnel http://{allowed}/tunnelled; echo; "  # CONNECT, as for https
                f"{curl} http://{allowed}/proxied; echo; "  # a plain-HTTP proxy request
                f'refusal=$({curl} --proxytunnel http://{refused}/ 2>&1); echo "exit $?: $refusal"'
            )
            with caplog.at_level(logging.WARNING, logger="hyperhive_core.modelproxy"), trio.fail_after(60):
                rc, out, err = await run_inside(hive, "alice", script)
                denied = await next_event(hive, "alice", "egress_denied")
            state = await host_commands.agent(hive, "alice")
        nursery.cancel_scope.cancel()
    tunnelled, proxied, refusal = out.splitlines()
    assert (rc, err) == (0, "")
    assert [json.loads(tunnelled)["target"], json.loads(proxied)["target"]] == ["/tunnelled", "/proxied"]
    assert refusal == "exit 56: curl: (56) CONNECT tunnel failed, response 403"
    assert (denied.data["target"], denied.data["count"]) == (refused, 1)
    assert "agent 'alice': egress to 127.0.0.1:9 denied (1 so far): it is not in [agents.alice] egress" in caplog.text
    [entry] = state["egress_denied"]
    assert (entry["target"], entry["count"]) == (refused, 1)
    assert state["config"]["egress"] == [allowed]


@needs_bwrap
async def test_the_operators_terminal_has_the_same_way_out(make_pm, tmp_path):
    """A shell on a fresh pty, as the dashboard's terminal runs it: the forwarder leaves it the
    terminal and its exit status."""
    async with trio.open_nursery() as nursery:
        origin = Origin()
        await nursery.start(origin.serve)
        allowed = f"127.0.0.1:{origin.port}"
        async with running_hive(
            tmp_path, make_pm(), QUIET, agents={"alice": {"egress": [allowed]}}, hive=SANDBOXES, bwrap=UIDS
        ) as hive:
            spec = hive.container_spec("alice")
            env = {**hive.session_env("alice", hive.backend.view(spec).state), "PS1": "$ "}
            shell = await hive.backend.exec(spec, ["bash", "--norc", "--noprofile", "-i"], env, pty=True)
            seen = b""

            async def expect(text: bytes) -> None:
                nonlocal seen
                while text not in seen:
                    chunk = await shell.stdout.receive_some()
                    assert chunk, f"the shell ended before {text!r}: {seen!r}"
                    seen += chunk

            with trio.fail_after(30):
                await shell.stdin.send_all(f"curl -sS --noproxy '' http://{allowed}/from-a-terminal\n".encode())
                await expect(b'"target": "/from-a-terminal"')
                await shell.stdin.send_all(b"exit 3\n")
                assert await shell.wait() == 3
        nursery.cancel_scope.cancel()


# -- nspawn: the same network, as its command line and NixOS config say ----------------------------


def test_an_nspawn_container_has_a_private_network_and_the_model_socket(tmp_path):
    spec = ContainerSpec("alice", "agent", tmp_path / "state", tmp_path / "run")
    mounts = Mounts({"/state": spec.state_dir, "/run/hyperhive": spec.socket_dir})
    assert "--private-network" in nspawn_argv("alice", tmp_path / "root", mounts, ["sleep", "infinity"])
    settings = nixos_host_settings(mounts)
    # Private, and no addresses: nixos-container adds a veth pair only for those.
    assert (settings["PRIVATE_NETWORK"], settings["HOST_ADDRESS"], settings["LOCAL_ADDRESS"]) == ("1", "", "")
    assert "privateNetwork = true;" in render_agent_nix(spec, AgentProfile("haiku", {}, {}), mounts)
    spec.socket_dir.mkdir()
    for name in ("agent.sock", "model.sock"):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(spec.socket_dir / name))
        listener.close()
    hand_over(spec, 65536 * 3)
    assert {path.name: path.stat().st_uid for path in spec.socket_dir.iterdir()} == {
        "agent.sock": 65536 * 3,
        "model.sock": 65536 * 3,
    }
