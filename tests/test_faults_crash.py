"""The daemon killed with SIGKILL at awkward moments, then started again on the same state dir.

A small plugin of the test's wraps one step of the daemon's own work and sends the
daemon SIGKILL right after it, once, when a marker file says so: a real kill at an
exact point, where one from outside would be a race.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from hyperhive_core.testing import Daemon, Script

pytestmark = pytest.mark.needs_claude

KILLER = '''
import os
import signal

from hyperhive_core import hookimpl


@hookimpl
def on_startup(hive):
    """After the config repos of a new agent are made, and before it is recorded: SIGKILL, once."""
    marker = hive.paths.root.parent / "kill-after-repos"
    create = hive.repos.create

    async def create_then_die(*args, **kwargs):
        sha = await create(*args, **kwargs)
        if marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return sha

    hive.repos.create = create_then_die
'''


@pytest.fixture
def killer(local_plugin, tmp_path: Path) -> None:
    source = tmp_path / "killer-src"
    source.mkdir()
    (source / "hyperhive_killer.py").write_text(textwrap.dedent(KILLER))
    local_plugin("killer", "hyperhive_killer", source)


def restarted(daemon: Daemon) -> Daemon:
    """The daemon, killed, started again on the same config and state dir."""
    assert daemon.process.wait(timeout=60) == -signal.SIGKILL
    return Daemon(daemon.hyperhive, daemon.config, daemon.socket, daemon.env)


def test_a_spawn_cut_short_by_sigkill_can_be_discarded_and_done_again(killer, hive_daemon):
    script = Script()
    script.otherwise("noted")
    first = hive_daemon(script, plugins=["killer"])
    (first.config.parent / "kill-after-repos").touch()
    assert first.cli("spawn", "scout").returncode != 0  # the daemon died under it
    daemon = restarted(first)
    try:
        again = daemon.cli("spawn", "scout")
        assert again.returncode == 1
        assert "'scout' already has a config repo" in again.stderr
        assert "purge it first (hyperhive destroy scout --purge)" in again.stderr
        # What the error says to do works, and says what it discards.
        kept = daemon.cli("destroy", "scout", "--yes")
        assert kept.returncode == 1
        assert "is what a spawn cut short left behind (its repos, no agent); discard it with --purge" in kept.stderr
        purged = daemon.cli("destroy", "scout", "--purge", "--yes")
        assert purged.returncode == 0, purged.stderr
        spawned = daemon.cli("spawn", "scout")
        assert spawned.returncode == 0, spawned.stderr
        assert "scout" in {agent["name"] for agent in daemon.request("status")["agents"]}
        # A name with nothing on disk is still unknown.
        unknown = daemon.cli("destroy", "nobody", "--purge", "--yes")
        assert "no agent or kept state named 'nobody'" in unknown.stderr
    finally:
        assert daemon.stop() == 0
