"""``hyperhive backup DEST``: a consistent copy of the state dir while the hive writes."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from hyperhive_core.backup import PAGES_PER_STEP, BackupError, backup
from hyperhive_core.broker import Broker, BrokerSection, RecipientDirectory
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.cli import cli
from hyperhive_core.paths import StatePaths
from hyperhive_core.store import Store

SENDERS = 8
BODY = "x" * 4000  # a page a message: the database outgrows one backup step quickly


@pytest.fixture
def paths(tmp_path):
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    return paths


@pytest.fixture
def store(paths):
    store = Store(paths.database)
    store.migrate({"core": CORE_MIGRATIONS})
    yield store
    store.close()


def message_ids(database: Path) -> set[int]:
    with closing(sqlite3.connect(database)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}


async def test_a_backup_under_write_load_holds_every_message_sent_before_it(store, paths, tmp_path, nursery):
    directory = RecipientDirectory()
    directory.add("bob")
    broker = Broker(store, BrokerSection(max_body_bytes=8192), policy=directory)
    await nursery.start(broker.serve)
    async with trio.open_nursery() as fill:  # enough pages for several backup steps
        for sender in range(SENDERS):
            fill.start_soon(_send_many, broker, f"agent-{sender}", 400)
    returned: list[tuple[float, int]] = []
    stop = trio.Event()

    async def keep_sending(sender: str) -> None:
        while not stop.is_set():
            message = await broker.send(sender, "bob", BODY)
            returned.append((time.monotonic(), message.id))

    async with trio.open_nursery() as load:
        for sender in range(SENDERS):
            load.start_soon(keep_sending, f"agent-{sender}")
        while len(returned) < 200:
            await trio.sleep(0.01)
        started = time.monotonic()
        report = await trio.to_thread.run_sync(backup, paths, tmp_path / "backup")
        finished = time.monotonic()
        stop.set()

    assert report.database_pages > 2 * PAGES_PER_STEP
    # The daemon's writer went on while the backup ran.
    assert sum(started < when < finished for when, _ in returned) > 0
    copy = tmp_path / "backup" / "hive.db"
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    before = {message_id for when, message_id in returned if when < started}
    in_copy = message_ids(copy)
    assert before <= in_copy
    # A snapshot: no gaps, so it is the database as of one commit.
    assert in_copy == set(range(1, max(in_copy) + 1))


async def _send_many(broker: Broker, sender: str, count: int) -> None:
    for _ in range(count):
        await broker.send(sender, "bob", BODY)


def make_state(paths: StatePaths) -> None:
    """A state dir as a running hive leaves it: agents, a config repo, the token, sockets."""
    agent = paths.agent_state("scout")
    agent.mkdir(parents=True)
    (agent / "notes.md").write_text("remember the milk\n")
    (agent / "credentials.json").write_text("{}")
    (agent / "credentials.json").chmod(0o600)
    (agent / "passwd").symlink_to("/etc/passwd")  # an agent's symlink is copied, never followed
    os.mkfifo(agent / "pipe")  # and a fifo neither blocks nor is copied
    repo = paths.root / "agents" / "scout" / "config"
    repo.mkdir()
    (repo / "agent.toml").write_text('model = "haiku"\n')
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "agent.toml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    (paths.root / "operator-token").write_text("secret")
    (paths.root / "operator-token").chmod(0o600)
    for path in (paths.host_socket, paths.agent_run("scout") / "agent.sock"):
        path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()
    generated = paths.root / "nspawn" / "scout"
    generated.mkdir(parents=True)
    (generated / "agent.nix").write_text("{ }\n")


def test_the_backup_holds_the_state_that_matters(store, paths, tmp_path):
    make_state(paths)
    owned = paths.agent_state("scout") / "notes.md"
    if os.geteuid() == 0:
        os.chown(owned, 61000, 61000)
    report = backup(paths, tmp_path / "backup")
    copy = tmp_path / "backup"
    assert sorted(path.name for path in copy.iterdir()) == ["agents", "hive.db", "operator-token"]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert stat.S_IMODE((copy / "operator-token").stat().st_mode) == 0o600
    state = copy / "agents" / "scout" / "state"
    assert (state / "notes.md").read_text() == "remember the milk\n"
    assert stat.S_IMODE((state / "credentials.json").stat().st_mode) == 0o600
    assert (state / "passwd").is_symlink()
    assert os.readlink(state / "passwd") == "/etc/passwd"
    assert not (state / "pipe").exists()
    assert report.skipped == [f"{paths.agent_state('scout') / 'pipe'} (not a regular file: a socket, fifo or device)"]
    if os.geteuid() == 0:
        assert (state / "notes.md").stat().st_uid == 61000
    config = copy / "agents" / "scout" / "config"
    log = subprocess.run(["git", "-C", str(config), "log", "--format=%s"], capture_output=True, text=True, check=True)
    assert log.stdout == "first\n"
    subprocess.run(["git", "-C", str(config), "fsck", "--strict"], capture_output=True, check=True)
    # Restored, the database opens with its migrations all applied.
    restored = Store(copy / "hive.db")
    try:
        assert restored.migrate({"core": CORE_MIGRATIONS}) == []
    finally:
        restored.close()


@pytest.fixture
def busy_file(paths, monkeypatch):
    """An agent's file, appended to during each of its first ``writes[0]`` copies.

    Racing a real writer is left to the scheduler; this lands the write in the copy every time.
    """
    busy = paths.agent_state("scout") / "transcript.jsonl"
    busy.parent.mkdir(parents=True)
    busy.write_text("line 1\n")
    writes = [0]
    copy = shutil.copyfileobj

    def copy_while_the_agent_writes(source, target, length=0):
        copy(source, target, length)
        if writes[0] > 0 and Path(os.readlink(f"/proc/self/fd/{source.fileno()}")) == busy.resolve():
            writes[0] -= 1
            with busy.open("a") as agent:
                agent.write("line 2\n")

    monkeypatch.setattr(shutil, "copyfileobj", copy_while_the_agent_writes)
    return busy, writes


def test_a_file_that_changed_while_copied_is_copied_again(store, paths, tmp_path, busy_file):
    busy, writes = busy_file
    writes[0] = 1
    backup(paths, tmp_path / "backup")
    assert (tmp_path / "backup" / busy.relative_to(paths.root)).read_text() == "line 1\nline 2\n"


def test_a_file_that_keeps_changing_fails_the_backup_and_leaves_nothing(store, paths, tmp_path, busy_file):
    busy, writes = busy_file
    writes[0] = 1000
    with pytest.raises(BackupError) as failed:
        backup(paths, tmp_path / "backup")
    assert str(failed.value) == (
        f"{busy} kept changing while it was copied (5 tries); pause the agent that writes it "
        "(`hyperhive pause NAME`) or stop the hive, then run the backup again"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state"]


@pytest.fixture
def run_backup(paths, tmp_path):
    """``hyperhive --config … backup DEST`` against the state dir at ``paths``."""
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{paths.root}"\n')

    def run(dest: Path) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--config", str(config), "backup", str(dest)])
        return result.exit_code, result.output

    return run


def test_the_backup_command_says_what_it_copied(store, paths, tmp_path, run_backup):
    make_state(paths)
    code, output = run_backup(tmp_path / "backup")
    assert code == 0, output
    assert output.startswith(f"backed up {paths.root} to {tmp_path / 'backup'}: database ")
    assert f"  skipped {paths.agent_state('scout') / 'pipe'} (not a regular file" in output


def test_the_backup_never_merges_into_an_existing_directory(store, paths, tmp_path, run_backup):
    (tmp_path / "old").mkdir()
    code, output = run_backup(tmp_path / "old")
    assert code != 0
    assert f"{tmp_path / 'old'} already exists; give a new path (a backup never merges into a directory)" in output


def test_the_backup_stays_out_of_the_state_dir(store, paths, run_backup):
    code, output = run_backup(paths.root / "agents" / "backup")
    assert code != 0
    assert "is inside the state dir" in output
    assert "put the backup somewhere else" in output


def test_the_backup_needs_the_destinations_parent(store, paths, tmp_path, run_backup):
    code, output = run_backup(tmp_path / "missing" / "backup")
    assert code != 0
    assert f"{tmp_path / 'missing'} does not exist; create it first" in output


def test_a_state_dir_without_a_database_is_reported(paths, tmp_path, run_backup):
    code, output = run_backup(tmp_path / "backup")
    assert code != 0
    assert f"no hive database at {paths.database}; point --config at the hive's config" in output


def test_a_database_that_cannot_be_copied_is_reported(paths, tmp_path, run_backup):
    paths.database.write_text("not a database, " * 100)
    code, output = run_backup(tmp_path / "backup")
    assert code != 0
    assert f"cannot copy the database {paths.database}: file is not a database; check that you may read" in output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hyperhive.toml", "state"]


def test_the_hyperhive_command_has_backup(store, paths, tmp_path, clean_env, hyperhive):
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{paths.root}"\n')
    result = subprocess.run(
        [hyperhive, "--config", str(config), "backup", str(tmp_path / "backup")],
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert message_ids(tmp_path / "backup" / "hive.db") == set()
