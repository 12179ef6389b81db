"""``hyperhive attach NAME``: the terminal tab, in the local terminal, over the same websocket.

Also ``hyperhive dashboard``, which prints the login address again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
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


# Readline turns on bracketed paste each time it is ready to read a line: input sent
# before that may be flushed as it sets the terminal up, so piped lines wait for it.
SHELL_READY = b"\x1b[?2004h"
# A shell that never says it is ready (another readline config) gets its input after this.
READY_WAIT_SECONDS = 30.0
# Ctrl-D: the end of the piped input is the end of the shell's.
EOF_KEY = b"\x04"


@click.command()
@click.argument("name")
@pass_state
def attach(state: CliState, name: str) -> None:
    """Open a shell inside agent NAME's container, in this terminal. Exit the shell to detach.

    With input piped in (``echo ls | hyperhive attach NAME``) the shell runs it line by
    line and ends where it ends.
    """
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
    """Bridge the local terminal (or piped input) to ``agent``'s shell until it exits; return why it ended."""
    socket_url = url.replace("http", "ws", 1) + terminal_path(agent)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    interactive = os.isatty(stdin)
    # One item each time the shell is ready to read a line.
    prompts, ready = trio.open_memory_channel[None](math.inf)
    try:
        async with open_websocket_url(socket_url, extra_headers=headers) as connection:
            with own_stdin(stdin, raw=interactive):
                async with trio.lowlevel.FdStream(os.dup(stdin)) as keys, trio.open_nursery() as nursery:
                    if interactive:
                        await send_size(connection, stdin)
                        nursery.start_soon(forward_keys, keys, connection)
                        nursery.start_soon(forward_resizes, connection, stdin)
                    else:
                        nursery.start_soon(forward_piped, keys, connection, ready)
                    try:
                        tail = b""  # too short to hold a whole marker: each is counted once
                        while True:
                            output: bytes = await connection.get_message()  # type: ignore[assignment]
                            for _ in range((tail + output).count(SHELL_READY)):  # one may come in two pieces
                                prompts.send_nowait(None)
                            tail = (tail + output)[-(len(SHELL_READY) - 1) :]
                            os.write(stdout, output)
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


async def forward_piped(
    keys: trio.lowlevel.FdStream, connection: WebSocketConnection, ready: trio.MemoryReceiveChannel[None]
) -> None:
    """Piped input, a line each time the shell is ready to read one (sent earlier, readline may
    flush it as it sets the terminal up), then the end of input; attach goes on showing the
    output until the shell has ended."""

    async def when_ready(data: bytes) -> None:
        with trio.move_on_after(READY_WAIT_SECONDS):
            await ready.receive()
        await connection.send_message(data)

    pending = b""
    while data := await keys.receive_some(4096):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            await when_ready(line + b"\n")
    if pending:  # the input's last line, without its newline
        await when_ready(pending + b"\n")
    await when_ready(EOF_KEY)  # on an empty line: the shell ends


async def forward_resizes(connection: WebSocketConnection, fd: int) -> None:
    with trio.open_signal_receiver(signal.SIGWINCH) as resizes:
        async for _ in resizes:
            await send_size(connection, fd)


async def send_size(connection: WebSocketConnection, fd: int) -> None:
    size = os.get_terminal_size(fd)
    await connection.send_message(json.dumps({"resize": [size.lines, size.columns]}))


@contextlib.contextmanager
def own_stdin(fd: int, *, raw: bool) -> Iterator[None]:
    """Stdin for the remote shell; everything is put back after.

    :param raw: a terminal: keys go as typed (Ctrl-C included).
    """
    saved_mode = termios.tcgetattr(fd) if raw else None
    saved_flags = fcntl.fcntl(fd, fcntl.F_GETFL)  # FdStream makes the shared file non-blocking
    if raw:
        tty.setraw(fd)
    try:
        yield
    finally:
        if saved_mode is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, saved_flags)
