"""The terminal tab (and ``hyperhive attach``): a websocket to a shell on a PTY inside the agent's container.

Frames: binary both ways is terminal data; a text frame from the client is a JSON
control message, ``{"resize": [rows, cols]}``. The server closes the socket with
code 1000 and ``shell exited with status N`` when the shell ends, or at once with code
4001 and the host's name for an agent that runs on another host of the hive.
"""

from __future__ import annotations

import signal
from typing import Any

import trio
from quart import Blueprint, websocket

from hyperhive_core import ContainerProcess
from hyperhive_web.api import placed_on
from hyperhive_web.dashboard import current_dashboard
from hyperhive_web.jsonbody import TooDeep, loads

terminal = Blueprint("terminal", __name__)

SHELL = ("bash", "--login")
HANGUP_GRACE_SECONDS = 2.0
MAX_SIZE = 1000
# The close code for an agent whose container is on another host of the hive (4000-4999: the application's).
ELSEWHERE = 4001


def terminal_path(agent: str) -> str:
    return f"/-/web/agents/{agent}/terminal"


@terminal.websocket("/-/web/agents/<name>/terminal")
async def terminal_socket(name: str) -> None:
    hive = current_dashboard().hive
    host = placed_on(name)
    if host is not None:  # the shell is in a container on that host
        await websocket.accept()
        await websocket.close(ELSEWHERE, f"{name} runs on host {host}: open its terminal on that host's dashboard")
        return
    spec = hive.container_spec(name)
    env = {**hive.session_env(name, hive.backend.view(spec).state), "TERM": "xterm-256color"}
    # An asleep agent's container starts for the shell, and stays up while it runs.
    async with hive.container_in_use(name):
        shell = await hive.backend.exec(spec, SHELL, env, pty=True)
        try:
            await websocket.accept()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy_output, shell, nursery.cancel_scope)
                while True:
                    data = await websocket.receive()
                    if isinstance(data, bytes):
                        assert shell.stdin is not None
                        await shell.stdin.send_all(data)
                    else:
                        apply_control(shell, data)
            await websocket.close(1000, f"shell exited with status {await shell.wait()}")
        finally:
            await hang_up(shell)


async def copy_output(shell: ContainerProcess, done: trio.CancelScope) -> None:
    """Terminal output to the browser, until the shell is gone."""
    assert shell.stdout is not None
    while chunk := await shell.stdout.receive_some(65536):
        await websocket.send(bytes(chunk))
    done.cancel()


def apply_control(shell: ContainerProcess, text: str) -> None:
    """A resize from the client; anything else is ignored, as a terminal ignores line noise."""
    try:
        message: Any = loads(text)
        rows, cols = message["resize"]
    except (ValueError, TypeError, KeyError, TooDeep):
        return
    if isinstance(rows, int) and isinstance(cols, int) and 0 < rows <= MAX_SIZE and 0 < cols <= MAX_SIZE:
        shell.resize(rows, cols)


async def hang_up(shell: ContainerProcess) -> None:
    """The terminal closed: SIGHUP, as a real one sends; SIGKILL if the shell ignores it."""
    with trio.CancelScope(shield=True):
        if shell.returncode is None:
            shell.send_signal(signal.SIGHUP)
            with trio.move_on_after(HANGUP_GRACE_SECONDS):
                await shell.wait()
        if shell.returncode is None:
            shell.kill()
            await shell.wait()
        if shell.stdin is not None:
            await shell.stdin.aclose()  # the pty's master side: free it now, not when collected
