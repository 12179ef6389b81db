"""The terminal: a websocket to a shell on a PTY in the agent's container, and `hyperhive attach`."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
import textwrap

import pytest
import trio
from hyperhive_web import dashboard_of
from webkit import dashboard_hive, operator

from hyperhive_core.testing import needs_claude

pytestmark = needs_claude


# Readline turns on bracketed paste when it is ready to read: keys typed before that may be flushed.
SHELL_READY = b"\x1b[?2004h"


async def read_until(receive, text: bytes, seen: bytearray) -> None:
    while text not in seen:
        chunk = await receive()
        assert chunk, f"the shell ended before {text!r}: {bytes(seen)!r}"
        seen += chunk


async def test_the_terminal_runs_a_shell_in_the_agents_container_and_resizes(hive):
    seen = bytearray()
    with trio.fail_after(30):
        async with operator(hive).websocket("/-/web/agents/worker/terminal") as socket:

            async def receive() -> bytes:
                message = await socket.receive()
                assert not isinstance(message, str)
                return message or b""

            await socket.send(json.dumps({"resize": [33, 111]}))
            await read_until(receive, SHELL_READY, seen)
            await socket.send(b"echo hi-$((6*7)) $(pwd) && stty size\n")
            await read_until(receive, b"111\r\n", seen)
            await socket.send(b"exit 4\n")
            while await socket.receive() is not None:
                pass
    output = seen.decode()
    assert "hi-42" in output
    assert str(hive.paths.agent_state("worker")) in output  # the process backend starts in the agent's state dir
    assert "33 111" in output
    assert socket.close_reason == "shell exited with status 4"


async def test_a_terminal_for_an_unknown_agent_is_refused(hive):
    with trio.fail_after(10):
        status = await operator(hive).websocket_handshake("/-/web/agents/nobody/terminal")
    assert status == 404


ATTACH = textwrap.dedent(
    """
    import sys
    from hyperhive_core.cli import main
    sys.argv = ["hyperhive", "--config", sys.argv[1], "attach", "worker"]
    main()
    """
)


@pytest.mark.slow
async def test_attach_opens_the_agents_shell_in_a_local_terminal(hive, tmp_path):
    config = tmp_path / "attach.toml"
    config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\ncontainer_backend = "process"\n[web]\nport = 0\n')
    primary, secondary = pty.openpty()
    env = {**os.environ, "HYPERHIVE_LOAD_PLUGINS": "web", "TERM": "xterm"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", ATTACH, str(config)], stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    terminal = trio.lowlevel.FdStream(primary)
    seen = bytearray()

    async def receive() -> bytes:
        try:
            return await terminal.receive_some()
        except trio.BrokenResourceError:  # EIO: the child side is gone
            return b""

    try:
        with trio.fail_after(40):
            await read_until(receive, SHELL_READY, seen)
            await terminal.send_all(b"echo attached-$((40+2))\n")
            await read_until(receive, b"attached-42", seen)
            await terminal.send_all(b"exit\n")
            await read_until(receive, b"[shell exited with status 0]", seen)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await terminal.aclose()


def test_attach_without_a_running_hive_says_so(hyperhive, clean_env, tmp_path):
    (tmp_path / "hyperhive.toml").write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
    result = subprocess.run(
        [hyperhive, "attach", "worker"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**clean_env, "HYPERHIVE_LOAD_PLUGINS": "web"},
    )
    assert result.returncode == 1
    assert "is the hive running, with the web plugin?" in result.stderr  # piped input is fine: no daemon is not


async def test_the_login_address_is_logged_at_startup_and_printed_again(tmp_path, web_pm, hyperhive, clean_env, caplog):
    caplog.set_level(logging.INFO, logger="hyperhive_web")
    async with dashboard_hive(tmp_path, web_pm) as hive:
        login = f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}"
        assert f"log in to the dashboard: {login}" in caplog.text
        config = tmp_path / "again.toml"
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        env = {**clean_env, "HYPERHIVE_LOAD_PLUGINS": "web"}
        with trio.fail_after(30):
            result = await trio.run_process([hyperhive, "-c", str(config), "dashboard"], capture_stdout=True, env=env)
    assert result.stdout.decode().strip() == login
