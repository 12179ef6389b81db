"""``hyperhive attach NAME``: the terminal tab, in the local terminal, over the same websocket.

Also ``hyperhive dashboard``, which prints the login address again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

import click
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from hyperhive_core import CliState, pass_state, state_paths
from hyperhive_web.auth import TOKEN_FILE
from hyperhive_web.dashboard import read_address, web_dir
from hyperhive_web.terminal import terminal_path


def operator_token(root: Path) -> str:
    path = web_dir(root) / TOKEN_FILE
    try:
        return path.read_text().strip()
    except PermissionError:
        raise click.ClickException(f"cannot read {path}: run this as the user the hive runs as") from None
    except FileNotFoundError:
        raise click.ClickException(f"{path} does not exist: start the hive (hyperhive up) first") from None


@click.command()
@click.argument("name")
@pass_state
def attach(state: CliState, name: str) -> None:
    """Open a shell inside agent NAME's container, in this terminal. Exit the shell to detach."""
    if not os.isatty(sys.stdin.fileno()):
        raise click.ClickException("attach needs a terminal on stdin; run it from an interactive shell")
    root = state_paths(state.boot().config).root
    url = read_address(root)["url"]
    reason = trio.run(run_attach, url, operator_token(root), name, sys.stdin.fileno(), sys.stdout.fileno())
    click.echo(f"[{reason}]")


@click.command()
@pass_state
def dashboard(state: CliState) -> None:
    """Print the dashboard's login address (it logs in this browser)."""
    root = state_paths(state.boot().config).root
    click.echo(f"{read_address(root)['url']}/login?token={operator_token(root)}")


async def run_attach(url: str, token: str, agent: str, stdin: int, stdout: int) -> str:
    """Bridge the local terminal to ``agent``'s shell until it exits; return why it ended."""
    socket_url = url.replace("http", "ws", 1) + terminal_path(agent)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    try:
        async with open_websocket_url(socket_url, extra_headers=headers) as connection:
            with raw_mode(stdin):
                async with trio.lowlevel.FdStream(os.dup(stdin)) as keys:
                    await send_size(connection, stdin)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(forward_keys, keys, connection)
                        nursery.start_soon(forward_resizes, connection, stdin)
                        try:
                            while True:
                                os.write(stdout, await connection.get_message())  # type: ignore[arg-type]
                        except ConnectionClosed as closed:
                            nursery.cancel_scope.cancel()
                            return (closed.reason and closed.reason.reason) or "disconnected"
    except HandshakeError as exc:
        body = getattr(exc, "body", b"") or b""
        raise click.ClickException(f"the dashboard refused to attach to {agent!r}: {body.decode() or exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the dashboard at {url}: {exc}; is the hive running?") from None
    return "disconnected"


async def forward_keys(keys: trio.lowlevel.FdStream, connection: WebSocketConnection) -> None:
    while data := await keys.receive_some(4096):
        await connection.send_message(data)


async def forward_resizes(connection: WebSocketConnection, fd: int) -> None:
    with trio.open_signal_receiver(signal.SIGWINCH) as resizes:
        async for _ in resizes:
            await send_size(connection, fd)


async def send_size(connection: WebSocketConnection, fd: int) -> None:
    size = os.get_terminal_size(fd)
    await connection.send_message(json.dumps({"resize": [size.lines, size.columns]}))


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keys go to the remote shell as typed (Ctrl-C included); everything is put back after."""
    saved_mode = termios.tcgetattr(fd)
    saved_flags = fcntl.fcntl(fd, fcntl.F_GETFL)  # FdStream makes the shared file non-blocking
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, saved_flags)
