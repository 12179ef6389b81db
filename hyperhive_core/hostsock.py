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
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core.errors import HyperhiveError, PluginError
from hyperhive_core.plugins import HivePluginManager, Registry, collect

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_REQUEST = 1024 * 1024

HostCommand = Callable[..., Awaitable[Any] | Any]
# With ``retry_for``: the wait before the second try, doubled each time up to RETRY_MAX.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0


class DaemonNotRunning(HyperhiveError):
    """Nothing answers on the host socket."""


class HostCommandError(HyperhiveError):
    """The daemon refused a request; the message says why."""


class ConnectionLost(HostCommandError):
    """The connection dropped before the answer: the daemon may or may not have carried out the request."""


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
        await trio.serve_listeners(lambda stream: _serve_connection(hive, commands, stream), [listener])
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
        buffer = bytearray()
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_REQUEST:
                    await _reply(stream, {"error": f"request over {MAX_REQUEST} bytes; send one JSON object per line"})
                    return
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    return
                buffer += chunk
                continue
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
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


# -- the client side (the CLI): plain blocking sockets ------------------------------


def _connect(path: Path, timeout: float | None) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(str(path))
    except FileNotFoundError:
        client.close()
        raise DaemonNotRunning(f"the hive is not running (no socket at {path}); start it with `hyperhive up`") from None
    except ConnectionRefusedError:
        client.close()
        raise DaemonNotRunning(
            f"the hive is not running (nothing answers at {path}); start it with `hyperhive up`"
        ) from None
    except PermissionError:
        client.close()
        raise HostCommandError(
            f"permission denied on {path}; run as the daemon's user or join its admin group"
        ) from None
    return client


def request(
    path: Path,
    cmd: str,
    timeout: float | None = 60.0,
    *,
    retry_for: float = 0.0,
    on_retry: Callable[[HyperhiveError], object] | None = None,
    **arguments: Any,
) -> Any:
    """Send one command to the daemon and return its result.

    :param retry_for: for up to this many seconds, try again while the daemon is not
        running (not started yet, or restarting) or the connection drops before the
        answer; the waits double from ``RETRY_FIRST`` up to ``RETRY_MAX``. Only for a
        request that is safe to repeat: a read, or a ``send`` with an
        ``idempotency_key``, which the daemon stores once however often it comes.
    :param on_retry: called with the error before the first retry, to tell a person.
    :raises DaemonNotRunning: nothing listens at ``path``.
    :raises ConnectionLost: the connection dropped before the answer.
    :raises HostCommandError: the daemon answered with an error (never retried).
    """
    if retry_for and cmd == "send" and not arguments.get("idempotency_key"):
        raise ValueError("retrying a send without an idempotency_key could store it twice; give it one")
    line = json.dumps({"cmd": cmd, **arguments}).encode() + b"\n"
    deadline = time.monotonic() + retry_for
    wait = RETRY_FIRST
    while True:
        try:
            return _request_once(path, line, timeout)
        except (DaemonNotRunning, ConnectionLost) as exc:
            if not retry_for:
                raise
            if time.monotonic() + wait > deadline:
                raise type(exc)(f"{exc} (tried again for {retry_for:g} s)") from None
            if on_retry is not None and wait == RETRY_FIRST:
                on_retry(exc)
        time.sleep(wait)
        wait = min(wait * 2, RETRY_MAX)


def _request_once(path: Path, line: bytes, timeout: float | None) -> Any:
    try:
        with _connect(path, timeout) as client, client.makefile("rwb") as wire:
            wire.write(line)
            wire.flush()
            return _unwrap(wire.readline())
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ConnectionLost(
            f"the connection to the daemon at {path} was lost before its answer ({exc.strerror}); check its log"
        ) from None
    except TimeoutError:
        raise HostCommandError(f"the daemon at {path} did not answer within {timeout:g} s; check its log") from None


def subscribe(path: Path, agent: str | None = None, after_id: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield live events from the daemon until it closes the connection."""
    with _connect(path, None) as client, client.makefile("rwb") as wire:
        wire.write(json.dumps({"cmd": "subscribe", "agent": agent, "after_id": after_id}).encode() + b"\n")
        wire.flush()
        _unwrap(wire.readline())
        for line in wire:
            yield _unwrap_event(line)


def _unwrap(line: bytes) -> Any:
    if not line:
        raise ConnectionLost("the daemon closed the connection without answering; check its log")
    response = json.loads(line)
    if "error" in response:
        raise HostCommandError(response["error"])
    return response.get("ok")


def _unwrap_event(line: bytes) -> dict[str, Any]:
    response = json.loads(line)
    if "error" in response:
        raise HostCommandError(response["error"])
    return response["event"]
