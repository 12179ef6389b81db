"""The agents' MCP surface: one unix socket per agent, each connection an MCP session.

The socket a connection arrives on is the caller's identity: each agent's socket
gets its own MCP ``Server`` whose handlers hold that agent's ``ToolContext``, so no
argument can claim to be someone else. Claude Code reaches the socket through
``hyperhive relay`` (``relay.py``), started by the ``--mcp-config`` that
:meth:`AgentSockets.mcp_config` renders. ``docs/tools.md`` describes the design.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import trio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.shared.message import SessionMessage

import hyperhive_core
from hyperhive_core.errors import HyperhiveError, PluginError
from hyperhive_core.lines import LineReader, LineTooLong
from hyperhive_core.tool_schema import ToolSchema, tool_schema
from hyperhive_core.tools import ROLES, ToolContext

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from mcp.server.context import ServerRequestContext
    from mcp.server.models import InitializationOptions

    from hyperhive_core.hive import Hive
    from hyperhive_core.plugins import Registry

log = logging.getLogger(__name__)

SERVER_NAME = "hyperhive"
"""The MCP server's key in ``--mcp-config``; Claude Code names its tools ``mcp__hyperhive__<tool>``."""

CONTAINER_SOCKET = "/run/hyperhive/agent.sock"
"""Where an agent's socket is bind-mounted inside its container."""

MAX_LINE_BYTES = 4 * 1024 * 1024
"""The largest JSON-RPC message accepted; a longer line drops the connection."""

MAX_CONNECTIONS = 8
"""Concurrent connections per agent socket. Claude Code holds one; the cap stops an
agent's own code from tying up the daemon with more."""

# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class AgentSocketError(HyperhiveError):
    """An agent's socket cannot be opened."""


@dataclass
class _AgentSocket:
    """One agent's listening socket and the sessions on it."""

    ctx: ToolContext
    path: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed: trio.Event = field(default_factory=trio.Event)
    connections: int = 0


class AgentSockets:
    """Serves the hive's tools to each agent over that agent's own unix socket.

    Start :meth:`serve` in a nursery first, then :meth:`open` a socket per agent.
    Tool schemas are derived here, once, so a tool whose signature cannot be
    described is a startup error.

    :param relay_command: the argv that runs ``hyperhive relay`` where Claude Code
        runs, when a container sees it elsewhere; default :func:`default_relay_command`.
    :raises PluginError: a tool's signature cannot be described to the model.
    """

    def __init__(self, hive: Hive, tools: Registry, *, relay_command: Sequence[str] | None = None) -> None:
        self.hive = hive
        self.tools = tools
        self.relay_command = list(relay_command or default_relay_command())
        self._schemas = {name: _schema_of(tools, name) for name in tools}
        self._listings = {role: self._listing(role) for role in ROLES}
        self._sockets: dict[str, _AgentSocket] = {}
        self._nursery: trio.Nursery | None = None

    def tool_names(self, role: str) -> list[str]:
        """The names of the tools ``role`` may call, as plugins registered them."""
        return [tool.name for tool in self._listings[role]]

    def allowed_tools(self, role: str) -> list[str]:
        """The ``--allowedTools`` entries for every hive tool ``role`` may call."""
        return [claude_tool_name(name) for name in self.tool_names(role)]

    def mcp_config(self, socket_path: str | os.PathLike[str]) -> dict[str, Any]:
        """The ``--mcp-config`` (as JSON data) that makes Claude Code start the relay.

        :param socket_path: the agent's socket as Claude Code sees it; inside a
            container, :data:`CONTAINER_SOCKET`.
        """
        program, *args = self.relay_command
        server = {"type": "stdio", "command": program, "args": [*args, os.fspath(socket_path)]}
        return {"mcpServers": {SERVER_NAME: server}}

    async def call_tool(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Run a tool for the caller in ``ctx``; every failure is an error result the model can read."""
        tool = self.tools.items.get(name)
        if tool is None:
            callable_names = ", ".join(self.tool_names(ctx.role)) or "none"
            return _error(f"unknown tool {name!r}; the tools you can call are: {callable_names}")
        if not tool.allowed_for(ctx.role):
            roles = " and ".join(sorted(tool.roles))
            return _error(f"tool {name!r} is only for the {roles} role; you are {ctx.role!r}")
        problems = self._schemas[name].argument_errors(arguments)
        if problems:
            return _error(f"invalid arguments for tool {name!r}: {'; '.join(problems)}")
        try:
            result = tool.fn(ctx, **arguments)
            if inspect.isawaitable(result):
                result = await result
            text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        except HyperhiveError as exc:
            return _error(str(exc))
        except Exception as exc:
            log.exception("tool %r failed for agent %r", name, ctx.agent)
            return _error(f"{type(exc).__name__}: {exc}")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the agents' sockets until cancelled; every socket closes with it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._sockets.clear()

    async def open(self, agent: str, role: str, path: str | os.PathLike[str], *, owner_uid: int | None = None) -> None:
        """Listen for ``agent`` at ``path``; returns once connections are accepted.

        The parent directory is created private (0700) and the socket is 0600, so
        only the daemon's user, or ``owner_uid`` when given, can connect.

        :raises AgentSocketError: the agent already has a socket, or ``path`` is
            unusable.
        """
        if self._nursery is None:
            raise RuntimeError("AgentSockets.serve() must be running before a socket is opened")
        if role not in ROLES:
            raise AgentSocketError(f"unknown role {role!r} for agent {agent!r}; use one of {sorted(ROLES)}")
        if agent in self._sockets:
            raise AgentSocketError(f"agent {agent!r} already has a socket at {self._sockets[agent].path}")
        socket = _AgentSocket(ToolContext(self.hive, agent, role), Path(path))
        await start_listener(self._nursery, self._sockets, agent, socket, self._serve_socket, socket, owner_uid)

    async def close(self, agent: str) -> None:
        """Stop listening for ``agent``, end its sessions and remove the socket file."""
        await stop_listener(self._sockets, agent)

    def connections(self, agent: str) -> int:
        """How many MCP sessions ``agent`` has open right now."""
        socket = self._sockets.get(agent)
        return socket.connections if socket else 0

    def _listing(self, role: str) -> list[types.Tool]:
        schemas = self._schemas
        return [
            types.Tool(name=name, description=schemas[name].description, input_schema=schemas[name].input_schema)
            for name in self.tools
            if self.tools[name].allowed_for(role)
        ]

    async def _serve_socket(
        self, socket: _AgentSocket, owner_uid: int | None, *, task_status: trio.TaskStatus[None]
    ) -> None:
        agent = socket.ctx.agent
        try:
            with socket.scope:
                async with _listen(socket.path, owner_uid) as listener:
                    server = self._server_for(socket.ctx)
                    init_options = server.create_initialization_options()

                    async def handle(stream: trio.SocketStream) -> None:
                        if socket.connections >= MAX_CONNECTIONS:
                            log.warning("agent %r: refused a connection beyond %d", agent, MAX_CONNECTIONS)
                            await stream.aclose()
                            return
                        socket.connections += 1
                        try:
                            await _serve_connection(stream, server, init_options, agent)
                        except Exception:
                            # One broken session must not take the agent's socket down.
                            log.exception("agent %r: MCP session failed", agent)
                        finally:
                            socket.connections -= 1

                    log.info("agent %r: MCP socket listening at %s", agent, socket.path)
                    task_status.started()
                    await trio.serve_listeners(handle, [listener])
        finally:
            socket.closed.set()

    def _server_for(self, ctx: ToolContext) -> Server:
        """An MCP server bound to one caller: its handlers only ever see ``ctx``."""

        async def list_tools(
            _request: ServerRequestContext, _params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=self._listings[ctx.role])

        async def call_tool(
            _request: ServerRequestContext, params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await self.call_tool(ctx, params.name, params.arguments or {})

        return Server(SERVER_NAME, version=hyperhive_core.__version__, on_list_tools=list_tools, on_call_tool=call_tool)


class Listener(Protocol):
    """One agent's socket as a registry keeps it: its serving task's scope, and when it ended."""

    scope: trio.CancelScope
    closed: trio.Event


async def start_listener(
    nursery: trio.Nursery, registry: dict[str, Any], agent: str, listener: Listener, serve: Any, *args: Any
) -> None:
    """Register ``listener`` for ``agent`` and start ``serve(*args)``; unregister it if that fails."""
    registry[agent] = listener
    try:
        await nursery.start(serve, *args)
    except BaseException:
        if registry.get(agent) is listener:
            del registry[agent]
        raise


async def stop_listener(registry: dict[str, Any], agent: str) -> None:
    """Cancel ``agent``'s listener, if any, and wait until it has cleaned up."""
    listener = registry.pop(agent, None)
    if listener is not None:
        listener.scope.cancel()
        await listener.closed.wait()


def claude_tool_name(tool: str) -> str:
    """The name Claude Code gives a hive tool, as ``--allowedTools`` spells it."""
    return f"mcp__{SERVER_NAME}__{tool}"


def default_relay_command() -> list[str]:
    """The argv that starts ``hyperhive relay`` with the daemon's own interpreter.

    ``python -m`` rather than the console script: it works wherever the package is
    importable, from an installed tree or a source checkout alike.
    """
    return [sys.executable, "-m", "hyperhive_core", "relay"]


def _schema_of(tools: Registry, name: str) -> ToolSchema:
    try:
        return tool_schema(tools[name].fn)
    except PluginError as exc:
        raise PluginError(f"tool {name!r} from plugin {tools.owners[name]!r}: {exc}") from None


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


@asynccontextmanager
async def _listen(path: Path, owner_uid: int | None) -> AsyncIterator[trio.SocketListener]:
    """A private unix socket listening at ``path``, removed again on the way out."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise AgentSocketError(
            f"socket path {path} is longer than the {_MAX_SOCKET_PATH} bytes a unix socket allows; "
            "choose a shorter [hive] state_dir"
        )
    # 0700 keeps everyone else out during the moment between bind() and chmod().
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.stat().st_mode)):
        raise AgentSocketError(f"{path} exists and is not a socket; move it away so the agent's socket can go there")
    path.unlink(missing_ok=True)  # a stale socket from a daemon that did not shut down cleanly
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as sock:
        try:
            await sock.bind(os.fspath(path))
        except OSError as exc:
            raise AgentSocketError(f"cannot listen on {path}: {exc}") from exc
        try:
            os.chmod(path, 0o600)
            if owner_uid is not None:
                _chown(path, owner_uid)
            sock.listen(MAX_CONNECTIONS)
            yield trio.SocketListener(sock)
        finally:
            path.unlink(missing_ok=True)


def _chown(path: Path, uid: int) -> None:
    try:
        os.chown(path, uid, -1)
    except OSError as exc:
        raise AgentSocketError(
            f"cannot give {path} to uid {uid}: {exc}; giving each agent its own uid needs a daemon running as root"
        ) from exc


async def _serve_connection(
    stream: trio.SocketStream, server: Server, init_options: InitializationOptions, agent: str
) -> None:
    """Run one MCP session over a socket connection: JSON-RPC, one message per line."""
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    async with stream, trio.open_nursery() as nursery:
        reading = trio.CancelScope()

        async def read() -> None:
            with reading:
                await _read_messages(stream, to_server, agent)

        nursery.start_soon(read)
        nursery.start_soon(_write_messages, stream, from_server)
        # Returns at end of input, after cancelling the calls still running: the
        # caller is gone. The writer then drains what the server already answered.
        await server.run(from_client, to_client, init_options)
        reading.cancel()


async def _read_messages(
    stream: trio.SocketStream, to_server: MemoryObjectSendStream[SessionMessage | Exception], agent: str
) -> None:
    lines = LineReader(stream, MAX_LINE_BYTES)
    async with to_server:
        while True:
            try:
                line = await lines.receive_line()
            except LineTooLong:
                log.warning("agent %r: a message exceeded %d bytes; dropping the connection", agent, MAX_LINE_BYTES)
                return
            if line is None:
                return
            if line.strip() and not await _deliver(line, to_server, agent):
                return


async def _deliver(line: bytes, to_server: MemoryObjectSendStream[SessionMessage | Exception], agent: str) -> bool:
    """Hand one line to the session; False once the session has gone."""
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError as exc:
        log.warning("agent %r: dropped a line that is not a JSON-RPC message: %s", agent, exc)
        return True
    try:
        await to_server.send(SessionMessage(message))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False
    return True


async def _write_messages(stream: trio.SocketStream, from_server: MemoryObjectReceiveStream[SessionMessage]) -> None:
    # Closing from_server on the way out (async with) makes the server's later
    # writes fail fast, which it treats as the transport having gone.
    async with from_server:
        try:
            async for message in from_server:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await stream.send_all(data.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
