"""The daemon killed with SIGKILL at awkward moments, then started again on the same state dir.

A small plugin of the test's wraps one step of the daemon's own work and sends the
daemon SIGKILL right after it, once, when a marker file says so: a real kill at an
exact point, where one from outside would be a race.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from hyperhive_core.testing import Daemon, Script

pytestmark = pytest.mark.needs_claude

KILLER = '''
import os
import signal

from hyperhive_core import hookimpl


def die_after(owner, method, marker):
    """Make ``owner.method`` SIGKILL the daemon once it returns, once, if ``marker`` exists."""
    real = getattr(owner, method)

    async def then_die(*args, **kwargs):
        result = await real(*args, **kwargs)
        if marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, method, then_die)


@hookimpl
def on_startup(hive):
    markers = hive.paths.root.parent
    # A new agent's config repos are made, and it is not recorded yet.
    die_after(hive.repos, "create", markers / "kill-after-repos")
    # An approved spawn is carried out, and the approval is not recorded yet.
    die_after(hive.approvals, "_carry_out", markers / "kill-after-carry-out")
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


def test_an_approval_carried_out_just_before_sigkill_is_recorded_at_the_next_start(killer, hive_daemon):
    script = Script()
    script.on("manager", "need a scout").call("request_spawn", {"name": "scout", "description": "looks around"}).reply(
        "asked"
    )
    script.otherwise("noted")
    first = hive_daemon(script, plugins=["killer"])
    assert first.cli("send", "manager", "need a scout").returncode == 0
    deadline = time.monotonic() + 90
    while not (pending := first.request("approvals", status="pending")) and time.monotonic() < deadline:
        time.sleep(0.5)
    [request] = pending
    (first.config.parent / "kill-after-carry-out").touch()
    assert first.cli("approve", str(request["id"])).returncode != 0  # the daemon died under it
    daemon = restarted(first)
    try:
        settled = daemon.request("approval", approval_id=request["id"])
        assert (settled["status"], settled["note"]) == (
            "approved",
            "carried out just before the daemon stopped; recorded at the next start",
        )
        assert [agent["name"] for agent in daemon.request("status")["agents"]].count("scout") == 1
        # The manager hears of it, once, as approved.
        with sqlite3.connect(daemon.socket.with_name("hive.db")) as db:
            notices = [
                json.loads(body)
                for (body,) in db.execute("SELECT body FROM messages WHERE recipient = 'manager' AND kind = 'event'")
            ]
        resolved = [notice for notice in notices if notice["event"] == "approval_resolved"]
        assert [(notice["id"], notice["status"]) for notice in resolved] == [(request["id"], "approved")]
    finally:
        assert daemon.stop() == 0
