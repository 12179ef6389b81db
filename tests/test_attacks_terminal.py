"""Attacks on the operator's terminal: agent-chosen text printed by the real ``hyperhive`` command.

A config commit's diff, a request's description and a message body are the
manager's or an agent's words. Printed raw, an escape sequence in them could erase
the lines of the diff above it and paint others (the operator would approve what
they never saw), or hide text behind C1 controls and bidirectional overrides.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
from pathlib import Path

import trio

from hyperhive_core.testing import needs_claude, running_hive

pytestmark = needs_claude

SCENARIO = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""

# Up three lines, erase to the end of the screen, then a harmless-looking diff.
REPAINT = '\x1b[3A\x1b[J+model = "haiku"\n'
HIDDEN = "\x9b2J\u202eevil\u202c\r\x07\x08"


def git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    argv = ["git", "-C", str(repo), "-c", f"core.hooksPath={os.devnull}", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=60).stdout


def cli(hyperhive: str, config: Path, *args: str) -> str:
    """What the real command writes to a terminal (a pty: click strips some escapes only from pipes)."""
    leader, follower = pty.openpty()
    try:
        with subprocess.Popen(
            [hyperhive, "--config", str(config), *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
        ) as process:
            os.close(follower)
            output = b""
            with contextlib.suppress(OSError):  # EIO: the command ended and closed the pty
                while chunk := os.read(leader, 65536):
                    output += chunk
            assert process.wait(timeout=120) == 0, output
    finally:
        os.close(leader)
    return output.decode().replace("\r\n", "\n")  # the pty's own line endings


def assert_showable(output: str) -> None:
    """No character a terminal would act on, other than newline and tab."""
    acted_on = sorted({hex(ord(char)) for char in output if not char.isprintable() and char not in "\n\t"})
    assert acted_on == []


async def test_escape_sequences_from_agents_are_printed_as_text(make_pm, tmp_path, hyperhive):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        config = tmp_path / "cli.toml"
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        await hive.spawn("scout")
        repo = hive.repos.proposed("scout")
        (repo / "agent.toml").write_text('model = "sonnet"\n')
        (repo / "zz.txt").write_text(REPAINT)  # sorts after agent.toml: its diff comes last
        git(repo, "add", "--", "agent.toml", "zz.txt")
        git(repo, "commit", "--quiet", "--no-verify", "-m", "scout")
        approval = await hive.approvals.request_apply_commit("manager", "scout", "main", f"tidy up{HIDDEN}")
        await hive.broker.send("scout", "operator", f"report{REPAINT}{HIDDEN}")

        shown = await trio.to_thread.run_sync(cli, hyperhive, config, "approvals", str(approval.id))
        assert_showable(shown)
        assert '+model = "sonnet"' in shown
        assert "INVALID" not in shown
        assert '+\\x1b[3A\\x1b[J+model = "haiku"' in shown
        assert "tidy up\\x9b2J\\u202eevil\\u202c\\x0d\\x07\\x08" in shown

        received = await trio.to_thread.run_sync(cli, hyperhive, config, "debug", "recv")
        assert_showable(received)
        assert 'report\\x1b[3A\\x1b[J+model = "haiku"' in received
