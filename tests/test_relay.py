"""hyperhive relay: the stdio pipe Claude Code starts, the config that starts it, and the real CLI through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.mcp_surface import CONTAINER_SOCKET, AgentSockets, default_relay_command
from hyperhive_core.rehearsal import RehearsalServer, parse_scenario
from hyperhive_core.tools import ToolContext, collect_tools

CLAUDE = Path(__file__).resolve().parents[1] / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
# What `hyperhive relay` must never import: each costs ms to hundreds of ms per agent start.
HEAVY_PACKAGES = {"click", "pluggy", "trio", "anyio", "mcp", "pydantic", "json", "socket"}


def whoami(ctx: ToolContext) -> str:
    """Say who is calling."""
    return f"{ctx.agent} ({ctx.role})"


def roster(ctx: ToolContext) -> list[str]:
    """Every agent in the hive."""
    return [ctx.agent]


class Tools:
    @hookimpl
    def register_tools(self, register):
        register(whoami)
        register(roster, roles=["manager"])


@pytest.fixture
def tools(make_pm):
    return collect_tools(make_pm(builtin=False, tools=Tools()))


@pytest.fixture
async def sockets(tools, nursery) -> AgentSockets:
    surface = AgentSockets(object(), tools)
    await nursery.start(surface.serve)
    return surface


@pytest.fixture
async def alice_socket(sockets, tmp_path) -> Path:
    path = tmp_path / "run" / "alice" / "agent.sock"
    await sockets.open("alice", "agent", path)
    return path


def relay_argv(sockets: AgentSockets, socket_path: Path) -> list[str]:
    """The command Claude Code would run, read back from the generated --mcp-config."""
    server = sockets.mcp_config(socket_path)["mcpServers"]["hyperhive"]
    assert server["type"] == "stdio"
    return [server["command"], *server["args"]]


async def exchange(process: trio.Process, *messages: dict) -> list[dict]:
    """Write JSON-RPC messages to the relay's stdin; read one reply per request from its stdout."""
    for message in messages:
        await process.stdin.send_all(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
    data = b""
    while data.count(b"\n") < sum("id" in message for message in messages):
        chunk = await process.stdout.receive_some(65536)
        assert chunk, "the relay closed its stdout"
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


INITIALIZE = {
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
}


async def start_relay(nursery: trio.Nursery, sockets: AgentSockets, socket_path: Path) -> trio.Process:
    """Start the relay as Claude Code would; the nursery kills it if the test ends first."""
    pipes = dict.fromkeys(("stdin", "stdout", "stderr"), subprocess.PIPE)
    return await nursery.start(partial(trio.run_process, relay_argv(sockets, socket_path), check=False, **pipes))


async def test_the_relay_carries_an_mcp_session_end_to_end(sockets, alice_socket, nursery):
    process = await start_relay(nursery, sockets, alice_socket)
    with trio.fail_after(10):
        initialized, listed, called = await exchange(
            process,
            INITIALIZE,
            {"method": "notifications/initialized"},
            {"id": 2, "method": "tools/list"},
            {"id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}},
        )
        assert initialized["result"]["serverInfo"]["name"] == "hyperhive"
        assert [tool["name"] for tool in listed["result"]["tools"]] == ["whoami"]
        assert called["result"] == {"content": [{"type": "text", "text": "alice (agent)"}], "isError": False}

        # MCP stdio shutdown: closing stdin ends the session, and the relay with it.
        await process.stdin.aclose()
        assert await process.stdout.receive_some() == b""
        assert await process.wait() == 0


async def test_the_relay_says_when_the_hive_closes_the_connection(sockets, alice_socket, nursery):
    process = await start_relay(nursery, sockets, alice_socket)
    with trio.fail_after(10):
        await exchange(process, INITIALIZE)
        await sockets.close("alice")
        assert await process.wait() == 1
        stderr = await process.stderr.receive_some()
    assert b"the hive closed the connection" in stderr


def test_a_missing_socket_says_the_daemon_may_not_be_running(hyperhive, tmp_path):
    missing = tmp_path / "agent.sock"
    done = subprocess.run([hyperhive, "relay", os.fspath(missing)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"hyperhive relay: cannot connect to {missing}: no such socket. "
        "The hive daemon may not be running; start it with `hyperhive up`.\n"
    )


def test_a_stale_socket_says_the_daemon_is_not_running(hyperhive, tmp_path):
    stale = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(os.fspath(stale))  # bound, never listening: what a dead daemon leaves
    done = subprocess.run([hyperhive, "relay", os.fspath(stale)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "connection refused" in done.stderr
    assert "the hive daemon is not running" in done.stderr


def test_the_relay_needs_exactly_one_socket(hyperhive):
    done = subprocess.run([hyperhive, "relay"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: hyperhive relay SOCKET")

    helped = subprocess.run([hyperhive, "relay", "--help"], capture_output=True, text=True, timeout=30)
    assert (helped.returncode, helped.stderr) == (0, "")
    assert helped.stdout.startswith("usage: hyperhive relay SOCKET")


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_the_relay_imports_nothing_heavy(hyperhive, tmp_path, entry):
    argv = [hyperhive, "relay"] if entry == "console script" else default_relay_command()
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run([*argv, os.fspath(tmp_path / "x.sock")], capture_output=True, text=True, env=env, timeout=30)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "hyperhive_core.relay" in imported
    assert not {name.split(".")[0] for name in imported} & HEAVY_PACKAGES
    assert "hyperhive_core.cli" not in imported


def test_the_mcp_config_starts_the_relay_on_the_agents_socket(tools):
    assert AgentSockets(object(), tools).mcp_config(CONTAINER_SOCKET) == {
        "mcpServers": {
            "hyperhive": {
                "type": "stdio",
                "command": sys.executable,
                "args": ["-m", "hyperhive_core", "relay", "/run/hyperhive/agent.sock"],
            }
        }
    }
    in_container = AgentSockets(object(), tools, relay_command=["/opt/hyperhive/bin/hyperhive", "relay"])
    assert in_container.mcp_config(CONTAINER_SOCKET)["mcpServers"]["hyperhive"] == {
        "type": "stdio",
        "command": "/opt/hyperhive/bin/hyperhive",
        "args": ["relay", "/run/hyperhive/agent.sock"],
    }


def test_allowed_tools_are_the_roles_tools_as_claude_code_names_them(tools):
    sockets = AgentSockets(object(), tools)
    assert sockets.allowed_tools("agent") == ["mcp__hyperhive__whoami"]
    assert sockets.allowed_tools("manager") == ["mcp__hyperhive__whoami", "mcp__hyperhive__roster"]


SCENARIO = """
[[agents.alice.rules]]
name = "identify"
when = "who am i"
steps = [{ tool = "whoami" }, { text = "I am {{result}}." }]
"""


@pytest.mark.skipif(not CLAUDE.exists(), reason="the pinned Claude Code CLI is not installed; run `make install`")
async def test_claude_code_calls_a_hive_tool_through_the_relay(sockets, alice_socket, nursery, tmp_path):
    model = await nursery.start(RehearsalServer(parse_scenario(SCENARIO, "test")).serve)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env |= model.env_for("alice") | {"HOME": os.fspath(tmp_path)}
    argv = [
        os.fspath(CLAUDE),
        "-p",
        "who am i?",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "haiku",
        "--mcp-config",
        json.dumps(sockets.mcp_config(alice_socket)),
        "--strict-mcp-config",
        "--allowedTools",
        ",".join(sockets.allowed_tools("agent")),
    ]
    with trio.fail_after(120):
        done = await trio.run_process(argv, env=env, cwd=tmp_path, capture_stdout=True, capture_stderr=True)
    events = [json.loads(line) for line in done.stdout.splitlines()]

    [init] = [event for event in events if event.get("subtype") == "init"]
    assert {"name": "hyperhive", "status": "connected", "source": "dynamic"} in init["mcp_servers"]
    hive_tools = [name for name in init["tools"] if name.startswith("mcp__hyperhive__")]
    assert hive_tools == ["mcp__hyperhive__whoami"]  # roster is the manager's

    results = [block for block in _content_blocks(events, "user") if block.get("type") == "tool_result"]
    assert [(result.get("is_error", False), result["content"]) for result in results] == [
        (False, [{"type": "text", "text": "alice (agent)"}])
    ]
    assert events[-1]["type"] == "result"
    assert events[-1]["result"] == "I am alice (agent)."


def _content_blocks(events: list[dict], kind: str) -> list[dict[str, Any]]:
    return [block for event in events if event.get("type") == kind for block in event["message"]["content"]]
