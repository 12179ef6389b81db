"""Attacks on ``hyperhive backup``, which runs as root and walks directories that agents write.

An agent owns its state dir, so while the backup copies a big file of a directory it
can swap that directory for a symlink to a host directory. A backup that opens the
rest of the directory by path then copies the host's files (those named like the
directory's, and whole subdirectories), and restoring it would put them in the
agent's own state dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hyperhive_core.backup import backup
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.paths import StatePaths
from hyperhive_core.store import Store

SECRET = "a host secret the agent may not read\n"
OWN = "the agent's own\n"
BIG = 64 * 1024 * 1024  # copied first (files go before subdirectories, by name): the swap lands meanwhile


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    store = Store(paths.database)
    store.migrate({"core": CORE_MIGRATIONS})
    store.close()
    return paths


async def swap_once_copying(backups: Path, inside: str, directory: Path, target: Path) -> None:
    """As the agent: once the backup writes ``inside`` of its partial copy, swap ``directory`` for a symlink."""
    with trio.fail_after(120):
        while not any((partial / inside).exists() for partial in backups.glob(".backup.*")):
            await trio.sleep(0.001)
    directory.rename(directory.with_name("elsewhere"))
    directory.symlink_to(target, target_is_directory=True)


async def test_a_directory_swapped_for_a_symlink_mid_backup_copies_nothing_from_the_host(paths, tmp_path):
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    for secret in (host / "secret", host / "sub" / "secret", host / "sub" / "other"):
        secret.write_text(SECRET)
    work = paths.agent_state("scout") / "work"
    (work / "sub").mkdir(parents=True)
    (work / "secret").write_text(OWN)
    (work / "sub" / "secret").write_text(OWN)
    with (work / "big").open("wb") as big:
        big.truncate(BIG)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(swap_once_copying, tmp_path, "agents/scout/state/work/big", work, host)
        report = await trio.to_thread.run_sync(backup, paths, tmp_path / "backup")

    assert work.is_symlink()  # the agent did swap it while the backup ran
    copied = tmp_path / "backup" / "agents" / "scout" / "state" / "work"
    assert sorted(path.name for path in copied.rglob("*")) == ["big", "secret", "secret", "sub"]
    assert {path.read_text() for path in copied.rglob("secret")} == {OWN}
    assert report.skipped == []
