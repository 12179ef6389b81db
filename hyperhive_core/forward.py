"""The sandbox's way out: ``forward.py SOCKET PORT -- COMMAND...``.

A sandbox has a network namespace of its own, with only a loopback interface. Its
one way out is the daemon's proxy on the unix socket ``SOCKET`` (bound in at
``/run/hyperhive/model.sock``). Claude Code and the tools it runs speak TCP, so
this listens on ``127.0.0.1:PORT`` in the sandbox and pipes each connection to
that socket, byte for byte; the daemon does the HTTP (``modelproxy.py``).

It binds the port, forks a child that serves it, and execs ``COMMAND`` in its own
place: the command keeps the pid, the stdio, the signals and the exit status the
backend gave it, and the port accepts connections before the command's first line
runs. The child leaves the command's session and stdio, and ends once the command
has (bwrap's pid namespace ends with it anyway; elsewhere it notices that its
parent is gone).

Every sandboxed exec starts one, so it runs as a script (``python -I -S``: no
site, no package import) and imports only built-in C modules, like ``relay.py``.
"""

from __future__ import annotations

import _socket
import _thread
import os
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import NoReturn

PORT = 8411
"""Where the sandbox reaches the daemon: ``http://127.0.0.1:8411``. Each sandbox has its
own loopback, so one fixed port serves all of them."""

USAGE = "usage: forward.py SOCKET PORT -- COMMAND [ARG...]"
_CHUNK = 65536
_BACKLOG = 128
_PARENT_CHECK_SECONDS = 1.0
_RETRY_SECONDS = 0.1


def command(socket_path: str, argv: list[str], port: int = PORT) -> list[str]:
    """The argv that runs ``argv`` with the forwarder in front, by the daemon's own interpreter."""
    return [sys.executable, "-I", "-S", __file__, socket_path, str(port), "--", *argv]


def main(args: list[str]) -> int:
    """Listen, fork the forwarding child, and exec the command; return a status only on failure."""
    if len(args) < 4 or args[2] != "--" or not args[1].isdigit():
        _say(USAGE)
        return 2
    socket_path, port, argv = args[0], int(args[1]), args[3:]
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # close-on-exec: the command never holds it
    try:
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(_BACKLOG)
    except OSError as exc:
        _say(f"hyperhive forward: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
        return 1
    parent = os.getpid()
    if os.fork() == 0:
        _serve(listener, socket_path, parent)  # never returns
    listener.close()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - the command as given, like any exec
    except OSError as exc:
        _say(f"hyperhive forward: cannot run {argv[0]}: {exc.strerror or exc}")
    return 127


def _serve(listener: _socket.socket, socket_path: str, parent: int) -> NoReturn:
    """The child: accept and pipe until the command (its parent) is gone."""
    try:
        os.setsid()  # the terminal's ^C and hangup are the command's, not ours
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the command's pipes reach EOF when the command is done
            os.dup2(null, fd)
        listener.settimeout(_PARENT_CHECK_SECONDS)
        while os.getppid() == parent:
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]  # the C socket's; typeshed omits it
            except TimeoutError:
                continue
            except OSError:  # out of descriptors, say: the client waits in the backlog meanwhile
                time.sleep(_RETRY_SECONDS)
                continue
            client = _socket.socket(fileno=fd)
            try:
                _thread.start_new_thread(_connect, (client, socket_path))
            except RuntimeError:  # no thread to be had (the agent's process cap): this one is refused
                client.close()
    except BaseException:  # noqa: S110 - the child must never return into the parent's code
        pass
    os._exit(0)


def _connect(client: _socket.socket, socket_path: str) -> None:
    # Server-sent events are small writes that must go out at once, not wait for an ACK.
    client.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError:
        # The client sees its connection reset; the daemon is stopping or restarting the agent.
        client.close()
        upstream.close()
        return
    done = _thread.allocate_lock()
    done.acquire()
    try:
        _thread.start_new_thread(_pump, (client, upstream, done))
    except RuntimeError:
        client.close()
        upstream.close()
        return
    _pump(upstream, client, None)
    done.acquire()  # both directions finished: only now may the sockets close
    client.close()
    upstream.close()


def _pump(source: _socket.socket, sink: _socket.socket, done: _thread.LockType | None) -> None:
    """Copy until ``source`` ends, then pass the end on (half-close), so each side sees the other's."""
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
        sink.shutdown(_socket.SHUT_WR)
    except OSError:
        # One side broke: break both, so the other direction ends too.
        for sock in (source, sink):
            try:  # noqa: SIM105 - contextlib would cost the start-up time this module saves
                sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        if done is not None:
            done.release()


def _say(text: str) -> None:
    os.write(2, f"{text}\n".encode())


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
