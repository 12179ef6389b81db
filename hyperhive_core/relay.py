"""``hyperhive relay SOCKET``: the agent's end of its MCP connection.

Claude Code runs the relay as its ``hyperhive`` MCP server (see
``AgentSockets.mcp_config``): a dumb byte pipe between its stdio and the agent's
unix socket, where the daemon serves the MCP session. Every agent session starts
one, so this module imports only the interpreter's built-in C modules (``import
socket`` alone costs ~8 ms: enum, selectors) and nothing of the hive.
"""

from __future__ import annotations

import _socket
import _thread
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import NoReturn

USAGE = "usage: hyperhive relay SOCKET\n\nPipe stdio to an agent's MCP socket in the hive; Claude Code starts this."
_CHUNK = 65536


def run(argv: list[str]) -> NoReturn:
    """``hyperhive relay SOCKET``: relay until either side closes, then exit.

    ``os._exit`` because the stdin thread may still be blocked in ``read()``: the
    process ends without waiting for it or tearing the interpreter down.
    """
    os._exit(main(argv))


def main(argv: list[str]) -> int:
    """Pipe stdin to the socket and the socket to stdout; return the exit status."""
    if argv in (["-h"], ["--help"]):
        os.write(1, f"{USAGE}\n".encode())
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        _say(USAGE)
        return 2
    path = argv[0]
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        _say(f"hyperhive relay: cannot connect to {path}: {_connect_failure(exc)}")
        return 1

    stdin_closed: list[bool] = []
    _thread.start_new_thread(_pump_stdin, (sock, stdin_closed))
    try:
        while data := sock.recv(_CHUNK):
            _write_all(1, data)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # Claude Code closed our stdout: it is done with this server
    except OSError as exc:
        _say(f"hyperhive relay: the connection to the hive failed: {exc}")
        return 1
    if stdin_closed:
        return 0  # an orderly shutdown: the client closed stdin, the hive finished answering
    _say("hyperhive relay: the hive closed the connection; the daemon may have stopped or restarted the agent")
    return 1


def _pump_stdin(sock: _socket.socket, stdin_closed: list[bool]) -> None:
    try:
        while data := os.read(0, _CHUNK):
            sock.sendall(data)
    except OSError:
        return  # the hive went away; the main thread sees it too, and reports it
    stdin_closed.append(True)
    # MCP stdio shutdown: the client closed stdin. Half-close so the hive sees end
    # of input, and keep relaying until it has answered and closed its side.
    try:
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        return  # the hive is already gone


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _connect_failure(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket. The hive daemon may not be running; start it with `hyperhive up`."
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused. The socket is stale: the hive daemon is not running; start it with `hyperhive up`."
    if isinstance(exc, PermissionError):
        return "permission denied. The socket belongs to another agent or user."
    return f"{exc.strerror or exc}. Is the hive daemon running?"


def _say(text: str) -> None:
    os.write(2, f"{text}\n".encode())
