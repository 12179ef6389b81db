"""The host control socket: the operator's CLI (and outside tools) talk to the daemon here.

JSON lines over a unix socket: one request per line, each with a ``cmd``; one
response line per request, always carrying ``version`` and either ``ok`` (the
result) or ``error`` (a sentence saying what to do). ``subscribe`` turns the
connection into a stream of ``{"version", "event"}`` lines. The socket is mode
0660, so only the daemon's user and the configured admin group can use it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core.errors import HyperhiveError, PluginError
from hyperhive_core.hostclient import ConnectionLost, DaemonNotRunning, HostCommandError, request, subscribe
from hyperhive_core.lines import LineReader, LineTooLong
from hyperhive_core.plugins import HivePluginManager, Registry, collect

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

# The client half lives in hostclient, quick to import without trio; plugins import it from here too.
__all__ = [
    "PROTOCOL_VERSION",
    "ConnectionLost",
    "DaemonNotRunning",
    "HostCommandError",
    "collect_host_commands",
    "group_id",
    "request",
    "serve_host_socket",
    "subscribe",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_REQUEST = 1024 * 1024

HostCommand = Callable[..., Awaitable[Any] | Any]


def collect_host_commands(pm: HivePluginManager) -> Registry:
    """Every host-socket command from ``register_host_commands``, by name."""

    def adapt(name: str, handler: HostCommand) -> tuple[str, HostCommand]:
        if not name.replace("-", "_").isidentifier():
            raise PluginError(f"host command name {name!r} must be a word like 'status' or 'dead-letters'")
        return name, handler

    return collect(pm, "register_host_commands", "host command", adapt)


async def serve_host_socket(
    hive: Hive, path: Path, group: str = "", *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``path`` until cancelled, answering each connection's requests."""
    commands = collect_host_commands(hive.pm)
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # create it 0660 from the start: no window with wider access
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group:
        os.chown(path, -1, group_id(group))
    os.chmod(path, 0o660)
    sock.listen(64)
    listener = trio.SocketListener(sock)
    log.info("host socket listening on %s", path)
    task_status.started()
    try:
        await trio.serve_listeners(partial(_serve_connection, hive, commands), [listener])
    finally:
        path.unlink(missing_ok=True)


def group_id(group: str) -> int:
    """The id of the host socket's admin group; a clear error when it does not exist."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HyperhiveError(
            f"[hive] admin_group = {group!r} does not exist; create it (groupadd {group}) or clear the setting"
        ) from None


async def _serve_connection(hive: Hive, commands: Registry, stream: trio.SocketStream) -> None:
    async with stream:
        lines = LineReader(stream, MAX_REQUEST)
        while True:
            try:
                line = await lines.receive_line()
            except LineTooLong:
                await _reply(stream, {"error": f"request over {MAX_REQUEST} bytes; send one JSON object per line"})
                return
            if line is None:
                return
            if not line.strip():
                continue
            request = _parse(line)
            if isinstance(request, str):
                await _reply(stream, {"error": request})
            elif request["cmd"] == "subscribe":
                await _stream_events(hive, stream, request)
                return
            else:
                await _reply(stream, await _dispatch(hive, commands, request))


def _parse(line: bytes) -> dict[str, Any] | str:
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"request is not valid JSON ({exc}); send one JSON object per line"
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return 'each request must be a JSON object with a "cmd" string, like {"cmd": "status"}'
    return request


async def _dispatch(hive: Hive, commands: Registry, request: dict[str, Any]) -> dict[str, Any]:
    name = request.pop("cmd")
    if name not in commands:
        return {"error": f"unknown command {name!r}; known commands: {', '.join(sorted(commands))}, subscribe"}
    try:
        result = commands[name](hive, **request)
        if isinstance(result, Awaitable):
            result = await result
    except HyperhiveError as exc:
        return {"error": str(exc)}
    except TypeError as exc:
        return {"error": f"bad arguments for {name!r}: {exc}"}
    except Exception as exc:
        log.exception("host command %s failed", name)
        return {"error": f"{name} failed: {type(exc).__name__}: {exc}"}
    return {"ok": result}


async def _stream_events(hive: Hive, stream: trio.SocketStream, request: dict[str, Any]) -> None:
    agent = request.get("agent")
    after = request.get("after_id")
    try:
        async with hive.events.subscribe(agent, after_id=after) as subscription:
            await _reply(stream, {"ok": "subscribed"})
            async for event in subscription:
                await _reply(
                    stream, {"event": {"id": event.id, "agent": event.agent, "type": event.type, "data": event.data}}
                )
    except HyperhiveError as exc:
        await _reply(stream, {"error": str(exc)})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _reply(stream: trio.SocketStream, response: dict[str, Any]) -> None:
    line = json.dumps({"version": PROTOCOL_VERSION, **response}, default=str).encode() + b"\n"
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the client left
        await stream.send_all(line)
