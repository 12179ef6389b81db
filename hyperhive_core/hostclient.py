"""The client side of the host socket (docs/hostsock.md): plain blocking sockets.

The CLI imports this for every command that talks to the running daemon, and
``hyperhive send`` should start about as fast as Python itself: so only the
standard library, and ``_socket`` rather than ``socket`` (which builds its enums
at import, a few ms). The server side, on trio, is ``hyperhive_core.hostsock``.
"""

from __future__ import annotations

import _socket
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hyperhive_core.errors import HyperhiveError

_CHUNK = 65536
# With ``retry_for``: the wait before the second try, doubled each time up to RETRY_MAX.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0


class DaemonNotRunning(HyperhiveError):
    """Nothing answers on the host socket."""


class HostCommandError(HyperhiveError):
    """The daemon refused a request; the message says why."""


class ConnectionLost(HostCommandError):
    """The connection dropped before the answer: the daemon may or may not have carried out the request."""


def _connect(path: Path, timeout: float | None) -> _socket.socket:
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
    except BaseException:
        client.close()
        raise
    return client


def _lines(client: _socket.socket) -> Iterator[bytes]:
    """The lines the daemon sends, until it closes the connection."""
    buffer = bytearray()
    while chunk := client.recv(_CHUNK):
        searched = len(buffer)  # a long line comes in many chunks: look at each byte once
        buffer += chunk
        while (newline := buffer.find(b"\n", searched)) >= 0:
            yield bytes(buffer[:newline])
            del buffer[: newline + 1]
            searched = 0
    if buffer:
        yield bytes(buffer)


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
    client = _connect(path, timeout)
    try:
        # The daemon may refuse a request part-way (too long, say): its reply says why.
        with contextlib.suppress(BrokenPipeError):
            client.sendall(line)
        return _unwrap(next(_lines(client), b""))
    except ConnectionResetError as exc:
        raise ConnectionLost(
            f"the connection to the daemon at {path} was lost before its answer ({exc.strerror}); check its log"
        ) from None
    except TimeoutError:
        raise HostCommandError(f"the daemon at {path} did not answer within {timeout:g} s; check its log") from None
    finally:
        client.close()


def subscribe(path: Path, agent: str | None = None, after_id: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield live events from the daemon until it closes the connection."""
    client = _connect(path, None)
    try:
        client.sendall(json.dumps({"cmd": "subscribe", "agent": agent, "after_id": after_id}).encode() + b"\n")
        lines = _lines(client)
        _unwrap(next(lines, b""))
        for line in lines:
            yield _unwrap_event(line)
    finally:
        client.close()


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
