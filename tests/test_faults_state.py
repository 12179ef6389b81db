"""Faults in the state dir: a second daemon, a locked, damaged or newer hive.db, a damaged config file.

Each runs the real ``hyperhive up`` on a real state dir and checks that it refuses
with one line naming the file and what to do, and that nothing in the database changed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from hyperhive_core.testing import Daemon, Script

pytestmark = pytest.mark.needs_claude


def quiet() -> Script:
    script = Script()
    script.otherwise("noted")
    return script


def refused_up(daemon: Daemon) -> str:
    """Run ``hyperhive up`` on ``daemon``'s config, expecting a refusal; its one error line."""
    command = [daemon.hyperhive, "-c", str(daemon.config), "up"]
    try:
        done = subprocess.run(command, env=daemon.env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`hyperhive up` started instead of refusing:\n{exc.stderr!r}") from None
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def database(daemon: Daemon) -> Path:
    return daemon.socket.with_name("hive.db")


def queued_bodies(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [body for (body,) in conn.execute("SELECT body FROM messages WHERE recipient = 'worker' ORDER BY id")]


def test_second_daemon_on_one_state_dir_refuses_and_leaves_the_first_running(hive_daemon):
    first = hive_daemon(quiet(), agents={"worker": {}})
    line = refused_up(first)
    assert f"another hyperhive daemon (pid {first.process.pid}) runs on state dir" in line
    assert "stop it first" in line
    # The first still owns its host socket: the second did not take it over.
    assert first.process.poll() is None
    assert first.request("status")["agents"]


def test_daemon_killed_with_sigkill_leaves_no_lock_behind(hive_daemon):
    first = hive_daemon(quiet())
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=30)
    again = Daemon(first.hyperhive, first.config, first.socket, first.env)
    try:
        assert again.request("status")["agents"]
    finally:
        assert again.stop() == 0


@pytest.fixture
def stopped(hive_daemon) -> Daemon:
    """A state dir a daemon ran on, with a message for ``worker`` queued while it was paused."""
    daemon = hive_daemon(quiet(), agents={"worker": {}})
    assert daemon.cli("pause", "worker").returncode == 0
    sent = daemon.cli("send", "worker", "keep me")
    assert sent.returncode == 0, sent.stderr
    assert daemon.stop() == 0
    assert queued_bodies(database(daemon)) == ["keep me"]
    return daemon


def test_database_locked_by_another_process_is_refused_at_once(stopped):
    holder = sqlite3.connect(database(stopped), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        line = refused_up(stopped)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"database {database(stopped)} is locked by another process" in line
    assert "fuser -v" in line
    assert queued_bodies(database(stopped)) == ["keep me"]


def test_database_from_a_newer_version_is_refused_untouched(stopped):
    with sqlite3.connect(database(stopped)) as conn:
        conn.execute("INSERT INTO _migrations VALUES ('core', 'm999_from_the_future', 0)")
    line = refused_up(stopped)
    assert "was migrated by a newer hyperhive (migration core:m999_from_the_future is unknown here)" in line
    assert "restore the backup taken before the upgrade" in line
    assert queued_bodies(database(stopped)) == ["keep me"]


def test_damaged_database_says_to_restore_not_to_check_permissions(stopped):
    path = database(stopped)
    for leftover in (path.with_name("hive.db-wal"), path.with_name("hive.db-shm")):
        leftover.unlink(missing_ok=True)
    path.write_bytes(b"this is not a database, it was overwritten" * 100)
    line = refused_up(stopped)
    assert f"cannot open database {path}: file is not a database; restore it from a backup" in line
    assert "permissions" not in line


def test_config_file_that_is_not_utf8_is_named(stopped):
    good = stopped.config.read_bytes()
    stopped.config.write_bytes(good[:40] + b"\xff\xfe garbage")
    line = refused_up(stopped)
    assert line == f"Error: {stopped.config} is not UTF-8 text (byte 40); rewrite it as UTF-8 TOML"


def test_database_locked_while_the_hive_runs_refuses_sends_clearly_then_recovers(hive_daemon):
    daemon = hive_daemon(quiet(), agents={"worker": {}})
    assert daemon.cli("pause", "worker").returncode == 0
    assert daemon.cli("send", "worker", "before").returncode == 0
    holder = sqlite3.connect(database(daemon), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        refused = daemon.cli("send", "worker", "during")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.returncode == 1
    assert (
        f"message to 'worker' was not stored: database {database(daemon)} is locked by another process; "
        f"stop it (`fuser -v {database(daemon)}` names it)"
    ) in refused.stderr
    assert daemon.cli("send", "worker", "after").returncode == 0
    assert daemon.process.poll() is None
    assert queued_bodies(database(daemon)) == ["before", "after"]


def test_a_lost_database_beside_spawned_agents_is_refused_not_started_afresh(hive_daemon, tmp_path):
    daemon = hive_daemon(quiet())
    assert daemon.cli("spawn", "scout").returncode == 0
    assert daemon.stop() == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    files = [path for path in database(daemon).parent.glob("hive.db*")]
    for path in files:
        path.rename(moved / path.name)
    line = refused_up(daemon)
    assert line == (
        f"Error: {database(daemon)} is missing, but {database(daemon).with_name('applied')} holds agents' configs: "
        "the database was lost or moved. Put it back, or restore the state dir from a backup "
        "(docs/operations.md#restore); to start afresh instead, move the state dir away"
    )
    assert not database(daemon).exists()  # no empty database left behind
    for path in files:
        (moved / path.name).rename(path)
    again = Daemon(daemon.hyperhive, daemon.config, daemon.socket, daemon.env)
    try:
        assert "scout" in {agent["name"] for agent in again.request("status")["agents"]}
    finally:
        assert again.stop() == 0
