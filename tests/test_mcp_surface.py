"""The agents' MCP surface: tools per role, identity from the socket, errors as results."""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

import pytest
import trio

from hyperhive_core import hookimpl, mcp_surface
from hyperhive_core.errors import HyperhiveError, PluginError
from hyperhive_core.mcp_surface import AgentSocketError, AgentSockets
from hyperhive_core.tool_schema import parse_docstring, tool_schema
from hyperhive_core.tools import ToolContext, collect_tools

HIVE: Any = object()  # tools receive the hive untouched; these tools only check it is the same one

# The opening Claude Code 2.1.330 sends: a server/discover probe in the 2026-07-28
# per-request envelope, which every later request carries too.
CLAUDE_CODE_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "claude-code", "version": "2.1.330"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def whoami(ctx: ToolContext) -> dict:
    """Say who is calling."""
    return {"agent": ctx.agent, "role": ctx.role, "same_hive": ctx.hive is HIVE}


async def echo(ctx: ToolContext, text: str, times: int = 1) -> str:
    """Repeat some text.

    Only the first paragraph reaches the model.

    :param text: what to repeat.
    :param times: how many times,
        at least one.
    """
    await trio.sleep(0)
    return text * times


def roster(ctx: ToolContext) -> list[str]:
    """Every agent in the hive."""
    return ["alice", "boss"]


def boom(ctx: ToolContext) -> str:
    """Always fails, like a bug would."""
    raise RuntimeError("the flux capacitor melted")


def refuse(ctx: ToolContext, to: str) -> str:
    """Fails the way a tool refuses a user error."""
    raise HyperhiveError(f"no such recipient {to!r}; call peers() to see who you can message")


class Stall:
    """A tool that blocks until cancelled, reporting when it starts and ends."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()

    async def stall(self, ctx: ToolContext) -> str:
        """Wait forever."""
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()
        return "unreachable"


class SampleTools:
    def __init__(self) -> None:
        self.stall = Stall()

    @hookimpl
    def register_tools(self, register):
        for fn in (whoami, echo, boom, refuse, self.stall.stall):
            register(fn)
        register(roster, roles=["manager"])


class LineClient:
    """A bare MCP client: JSON-RPC, one message per line, over any trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.last_id = 0

    async def send(self, message: dict) -> None:
        await self.stream.send_all(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def receive(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def request(self, method: str, params: dict | None = None) -> dict:
        self.last_id += 1
        await self.send({"id": self.last_id, "method": method, "params": params or {}})
        reply = await self.receive()
        assert reply["id"] == self.last_id
        return reply

    async def initialize(self) -> dict:
        reply = await self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
        )
        await self.send({"method": "notifications/initialized"})
        return reply["result"]

    async def tool_names(self) -> list[str]:
        return [tool["name"] for tool in (await self.request("tools/list"))["result"]["tools"]]

    async def call(self, name: str, **arguments: Any) -> tuple[bool, str]:
        """Call a tool; return (is_error, its text)."""
        result = (await self.request("tools/call", {"name": name, "arguments": arguments}))["result"]
        [block] = result["content"]
        assert block["type"] == "text"
        return result.get("isError", False), block["text"]


@pytest.fixture
def plugin() -> SampleTools:
    return SampleTools()


@pytest.fixture
async def sockets(make_pm, plugin, nursery) -> AgentSockets:
    surface = AgentSockets(HIVE, collect_tools(make_pm(builtin=False, test_tools=plugin)))
    await nursery.start(surface.serve)
    return surface


@pytest.fixture
async def connect(sockets, tmp_path):
    """Open an agent's socket (once) and return a client connected to it."""
    opened, clients = set(), []

    async def open_and_connect(agent: str, role: str = "agent", *, initialize: bool = True) -> LineClient:
        path = tmp_path / "run" / agent / "agent.sock"
        if agent not in opened:
            await sockets.open(agent, role, path)
            opened.add(agent)
        client = LineClient(await trio.open_unix_socket(os.fspath(path)))
        clients.append(client)
        if initialize:
            await client.initialize()
        return client

    yield open_and_connect
    for client in clients:
        await client.stream.aclose()


# -- tools/list and tools/call -------------------------------------------------------


async def test_tools_list_shows_each_role_its_tools(connect):
    agent, manager = await connect("alice", "agent"), await connect("boss", "manager")
    assert await agent.tool_names() == ["whoami", "echo", "boom", "refuse", "stall"]
    assert await manager.tool_names() == ["whoami", "echo", "boom", "refuse", "stall", "roster"]

    [echo_tool] = [t for t in (await agent.request("tools/list"))["result"]["tools"] if t["name"] == "echo"]
    assert echo_tool["description"] == "Repeat some text."
    assert echo_tool["inputSchema"] == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "what to repeat."},
            "times": {"type": "integer", "default": 1, "description": "how many times, at least one."},
        },
        "required": ["text"],
        "additionalProperties": False,
    }


async def test_a_tool_call_returns_its_text(connect):
    client = await connect("alice")
    assert await client.call("echo", text="hi", times=3) == (False, "hihihi")
    assert await client.call("echo", text="once") == (False, "once")


async def test_the_caller_is_known_by_its_socket(connect):
    alice, boss = await connect("alice", "agent"), await connect("boss", "manager")
    assert json.loads((await alice.call("whoami"))[1]) == {"agent": "alice", "role": "agent", "same_hive": True}
    assert json.loads((await boss.call("whoami"))[1]) == {"agent": "boss", "role": "manager", "same_hive": True}

    # No argument can claim another identity: there is none to pass.
    is_error, text = await alice.call("whoami", agent="boss")
    assert is_error
    assert "'agent' was unexpected" in text


async def test_a_role_restricted_tool_is_refused_to_other_roles(connect):
    alice, boss = await connect("alice", "agent"), await connect("boss", "manager")
    assert await alice.call("roster") == (True, "tool 'roster' is only for the manager role; you are 'agent'")
    assert await boss.call("roster") == (False, '["alice", "boss"]')


async def test_an_unknown_tool_is_an_error_result_naming_the_real_ones(connect):
    is_error, text = await (await connect("alice")).call("launch_missiles")
    assert is_error
    assert text == "unknown tool 'launch_missiles'; the tools you can call are: whoami, echo, boom, refuse, stall"


async def test_a_failing_tool_is_an_error_result_and_the_traceback_is_logged(connect, caplog):
    client = await connect("alice")
    with caplog.at_level(logging.ERROR, logger="hyperhive_core.mcp_surface"):
        assert await client.call("boom") == (True, "RuntimeError: the flux capacitor melted")
    [record] = caplog.records
    assert "tool 'boom' failed for agent 'alice'" in record.getMessage()
    assert record.exc_info is not None

    # A hyperhive error is the user's to fix: just its message.
    expected = "no such recipient 'bob'; call peers() to see who you can message"
    assert await client.call("refuse", to="bob") == (True, expected)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "invalid arguments for tool 'echo': 'text' is a required property"),
        ({"text": 5}, "invalid arguments for tool 'echo': text: 5 is not of type 'string'"),
        ({"text": "a", "times": "2"}, "invalid arguments for tool 'echo': times: '2' is not of type 'integer'"),
        ({"text": "a", "loud": True}, "invalid arguments for tool 'echo': Additional properties are not allowed"),
    ],
)
async def test_bad_arguments_are_an_error_result(connect, arguments, message):
    is_error, text = await (await connect("alice")).call("echo", **arguments)
    assert is_error
    assert text.startswith(message)


async def test_a_client_that_disconnects_mid_call_cancels_the_call(connect, sockets, plugin):
    client = await connect("alice")
    await client.send({"id": 99, "method": "tools/call", "params": {"name": "stall", "arguments": {}}})
    with trio.fail_after(5):
        await plugin.stall.started.wait()
        await client.stream.aclose()
        await plugin.stall.cancelled.wait()
        while sockets.connections("alice"):
            await trio.sleep(0.01)


async def test_a_cancelled_request_cancels_the_call_and_the_session_goes_on(connect, plugin):
    client = await connect("alice")
    await client.send({"id": 99, "method": "tools/call", "params": {"name": "stall", "arguments": {}}})
    with trio.fail_after(5):
        await plugin.stall.started.wait()
        await client.send({"method": "notifications/cancelled", "params": {"requestId": 99}})
        await plugin.stall.cancelled.wait()
    assert await client.call("echo", text="still here") == (False, "still here")


# -- the wire ------------------------------------------------------------------------


async def test_claude_codes_opening_is_served_in_the_2026_protocol(connect):
    """Claude Code probes with server/discover; answered, it sends no initialize at all."""
    client = await connect("alice", initialize=False)
    discovered = await client.request("server/discover", {"_meta": CLAUDE_CODE_META})
    assert discovered["result"]["capabilities"]["tools"] == {"listChanged": False}

    listed = await client.request("tools/list", {"_meta": CLAUDE_CODE_META})
    assert "whoami" in [tool["name"] for tool in listed["result"]["tools"]]
    called = await client.request(
        "tools/call", {"name": "echo", "arguments": {"text": "hi"}, "_meta": CLAUDE_CODE_META}
    )
    assert called["result"]["content"] == [{"type": "text", "text": "hi"}]


async def test_a_line_that_is_not_json_rpc_is_dropped_and_the_session_goes_on(connect, caplog):
    client = await connect("alice")
    await client.stream.send_all(b"this is not json\n\n")
    assert await client.call("echo", text="ok") == (False, "ok")
    assert "dropped a line that is not a JSON-RPC message" in caplog.text


async def test_an_oversized_message_drops_the_connection(connect, monkeypatch, caplog):
    monkeypatch.setattr(mcp_surface, "MAX_LINE_BYTES", 1000)
    client = await connect("alice")
    await client.send({"id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x" * 5000}}})
    with trio.fail_after(5), pytest.raises(EOFError):
        await client.receive()
    assert "a message exceeded 1000 bytes" in caplog.text


async def test_connections_beyond_the_cap_are_refused(connect, monkeypatch, caplog):
    monkeypatch.setattr(mcp_surface, "MAX_CONNECTIONS", 1)
    first = await connect("alice")
    with trio.fail_after(5), pytest.raises((EOFError, trio.BrokenResourceError)):
        await connect("alice")
    assert "refused a connection beyond 1" in caplog.text
    assert await first.call("echo", text="fine") == (False, "fine")


# -- sockets -------------------------------------------------------------------------


async def test_the_socket_is_private_and_removed_on_close(sockets, tmp_path):
    path = tmp_path / "run" / "alice" / "agent.sock"
    await sockets.open("alice", "agent", path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    await sockets.close("alice")
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        await trio.open_unix_socket(os.fspath(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to another uid needs root")
async def test_the_socket_can_be_given_to_the_agents_own_uid(sockets, tmp_path):
    path = tmp_path / "run" / "alice" / "agent.sock"
    await sockets.open("alice", "agent", path, owner_uid=65534)
    assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (65534, 0o600)
    assert path.parent.stat().st_uid == os.geteuid()


async def test_close_ends_the_agents_sessions(connect, sockets, plugin):
    client = await connect("alice")
    await client.send({"id": 7, "method": "tools/call", "params": {"name": "stall", "arguments": {}}})
    with trio.fail_after(5):
        await plugin.stall.started.wait()
        await sockets.close("alice")
        assert plugin.stall.cancelled.is_set()
        with pytest.raises(EOFError):
            await client.receive()
    assert sockets.connections("alice") == 0


async def test_a_stale_socket_is_replaced_and_other_files_are_not(sockets, tmp_path):
    stale = tmp_path / "stale.sock"
    leftover = trio.socket.socket(trio.socket.AF_UNIX)
    await leftover.bind(os.fspath(stale))
    leftover.close()
    await sockets.open("alice", "agent", stale)
    async with await trio.open_unix_socket(os.fspath(stale)):
        pass

    precious = tmp_path / "notes.md"
    precious.write_text("keep me")
    with pytest.raises(AgentSocketError, match="exists and is not a socket"):
        await sockets.open("bob", "agent", precious)
    assert precious.read_text() == "keep me"


async def test_open_refuses_a_second_socket_a_long_path_and_an_unknown_role(sockets, tmp_path):
    await sockets.open("alice", "agent", tmp_path / "a.sock")
    with pytest.raises(AgentSocketError, match="already has a socket"):
        await sockets.open("alice", "agent", tmp_path / "b.sock")
    with pytest.raises(AgentSocketError, match="choose a shorter"):
        await sockets.open("bob", "agent", tmp_path / ("x" * 120) / "agent.sock")
    with pytest.raises(AgentSocketError, match="unknown role 'admin'"):
        await sockets.open("carol", "admin", tmp_path / "c.sock")
    # A failed open leaves nothing behind, so the agent can try again.
    await sockets.open("bob", "agent", tmp_path / "b.sock")


# -- schemas -------------------------------------------------------------------------


def test_schemas_follow_the_type_hints():
    def rich(
        ctx: ToolContext,
        name: str,
        count: int,
        ratio: float,
        loud: bool,
        tags: list[str],
        options: dict,
        labels: dict[str, int],
        anything: Any,
        note: str | None = None,
        ttl_seconds: int = 60,
        *,
        choices: list[str] | None = None,
    ) -> str:
        """Do many things."""
        return ""

    schema = tool_schema(rich)
    assert schema.description == "Do many things."
    assert schema.input_schema["properties"] == {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "loud": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object"},
        "labels": {"type": "object", "additionalProperties": {"type": "integer"}},
        "anything": {},
        "note": {"type": ["string", "null"]},
        "ttl_seconds": {"type": "integer", "default": 60},
        "choices": {"type": ["array", "null"], "items": {"type": "string"}},
    }
    assert schema.input_schema["required"] == [
        "name",
        "count",
        "ratio",
        "loud",
        "tags",
        "options",
        "labels",
        "anything",
    ]
    assert schema.argument_errors({"loud": 1, "tags": ["a", 2]} | dict.fromkeys(["name", "count", "ratio"], 1)) == [
        "'options' is a required property",
        "'labels' is a required property",
        "'anything' is a required property",
        "loud: 1 is not of type 'boolean'",
        "name: 1 is not of type 'string'",
        "tags.1: 2 is not of type 'string'",
    ]


def test_docstrings_give_the_description_and_the_argument_texts():
    doc = (
        "Send a message\nto a peer.\n\nLonger notes for humans.\n\n"
        ":param ctx: the caller.\n:param str to: who.\n:param body: the text,\n    in markdown.\n:return: a receipt."
    )
    assert parse_docstring(doc) == (
        "Send a message to a peer.",
        {"ctx": "the caller.", "to": "who.", "body": "the text, in markdown."},
    )
    assert parse_docstring(None) == (None, {})


def unresolvable(ctx: ToolContext, x: Missing) -> str:  # noqa: F821 - the point of the test
    return ""


@pytest.mark.parametrize(
    ("fn", "problem"),
    [
        (lambda: "", "must take the caller's ToolContext as its first positional parameter"),
        (lambda ctx, n: n, "parameter 'n' has no type hint"),
        (unresolvable, "cannot read its signature and type hints: name 'Missing' is not defined"),
    ],
)
def test_signatures_that_cannot_be_described_are_refused(fn, problem):
    with pytest.raises(PluginError, match=problem):
        tool_schema(fn)


def test_a_tool_the_model_cannot_call_is_a_startup_error_naming_its_plugin(make_pm):
    def tally(ctx: ToolContext, seen: set[str]) -> str:
        return ""

    class Odd:
        @hookimpl
        def register_tools(self, register):
            register(tally)

    expected = r"tool 'tally' from plugin 'odd': parameter 'seen' has type set\[str\], which a tool cannot take"
    with pytest.raises(PluginError, match=expected):
        AgentSockets(HIVE, collect_tools(make_pm(builtin=False, odd=Odd())))
