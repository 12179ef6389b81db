"""A full disk under a running daemon: sends refused clearly, nothing acked lost, the daemon and its agents live on.

The state dir is a real small tmpfs, filled with a real file; the agent is the real
Claude Code CLI on the rehearsal model.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_broker import fill, tmpfs

from hyperhive_core.testing import Daemon, Script

pytestmark = pytest.mark.needs_claude

FULL = "is full; free space on that filesystem"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem for the state dir."""
    with tmpfs(tmp_path / "disk", 16) as mountpoint:
        yield mountpoint


def messages(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as conn:
        return list(conn.execute("SELECT body, state FROM messages WHERE recipient = 'worker' ORDER BY id"))


def crashes(daemon: Daemon) -> int:
    return daemon.log.read_text().count("agent worker crashed")


def worker(daemon: Daemon) -> dict:
    return next(agent for agent in daemon.request("status")["agents"] if agent["name"] == "worker")


def test_a_full_disk_keeps_the_daemon_and_the_agent_alive_and_loses_nothing(hive_daemon, small_disk):
    script = Script()
    script.otherwise("noted")
    state = small_disk / "state"
    daemon = hive_daemon(script, toml=f'[hive]\nstate_dir = "{state}"\n', agents={"worker": {}})
    database = state / "hive.db"
    assert daemon.cli("pause", "worker").returncode == 0
    assert daemon.cli("send", "worker", "sent before the disk filled").returncode == 0

    filler = fill(small_disk)
    refused = daemon.cli("send", "worker", "sent on a full disk")
    assert refused.returncode == 1
    assert f"the disk holding {database} {FULL}, then send it again" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The resume may or may not find room to store the agent's status; either way it says why.
    resumed = daemon.cli("resume", "worker")
    assert resumed.returncode == 0 or f"the disk holding {database} {FULL}" in resumed.stderr, resumed.stderr

    # The agent's loop cannot lease on a full disk: it retries with backoff, however long
    # that lasts, and is not marked failed (five crashes in a minute would be).
    deadline = time.monotonic() + 120
    while crashes(daemon) < 6 and time.monotonic() < deadline and daemon.process.poll() is None:
        time.sleep(1)
    assert daemon.process.poll() is None, daemon.log.read_text()[-3000:]
    assert crashes(daemon) >= 6, daemon.log.read_text()[-3000:]
    assert not worker(daemon)["failed"]
    log = daemon.log.read_text()
    assert f"agent worker crashed (1 in a row): the disk holding {database} {FULL}; restarting in" in log
    assert "Traceback" not in log  # every line says what happened and what to do

    filler.unlink()
    if resumed.returncode:
        assert daemon.cli("resume", "worker").returncode == 0
    deadline = time.monotonic() + 120
    while messages(database) != [("sent before the disk filled", "acked")] and time.monotonic() < deadline:
        time.sleep(1)
    assert messages(database) == [("sent before the disk filled", "acked")]
    assert daemon.cli("send", "worker", "sent after").returncode == 0
    assert not worker(daemon)["failed"]
