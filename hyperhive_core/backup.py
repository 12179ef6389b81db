"""``hyperhive backup DEST``: a consistent copy of the state dir, taken while the hive runs.

What is copied, and how (docs/operations.md has the operator's version):

- ``hive.db`` through sqlite's online backup API, from a read connection of its
  own. The copy is stepped page by page inside one read transaction: in WAL mode a
  reader never blocks the daemon's writer, and the pinned snapshot means no step
  sees a later commit (without it, every commit between two steps restarts the
  backup, which then never ends under load). The result is the database exactly
  as of the moment the backup started. Only a WAL checkpoint (the broker's
  retention, every few minutes) waits for the copy to end.
- Then everything else in the state dir (agents' state dirs, config repos, applied
  configs, the dashboard's operator token, plugins' files), except what the hive
  rebuilds: sockets, ``run/``, the nspawn backend's generated containers and the
  daemon's scratch ``tmp/``. Files come after the database, so they are at least
  as new as it: a commit the database names is in the copied repo. Within a
  directory, files come before subdirectories and a git ``objects`` directory
  comes last, so each copied ref points at a copied object. A file whose size or
  timestamps change while it is copied is copied again; one that keeps changing
  fails the backup, naming it. (Timestamps tick every few milliseconds: a
  same-size rewrite within one tick goes unseen. Pause the agents for a copy of
  their state at one instant.)

The backup is built beside DEST and renamed into place when complete: a DEST that
exists is a whole backup.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import click

from hyperhive_core.cliopts import CliState, pass_state
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.paths import StatePaths

# Rebuilt as needed: agents' sockets, the nspawn backend's generated containers,
# the daemon's scratch (git's empty home and quarantines).
REBUILT_DIRS = ("run", "nspawn", "tmp")
# Beside the database: sqlite's own files, copied through the backup API instead.
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")
PAGES_PER_STEP = 1024
COPY_ATTEMPTS = 5
# Copied last in any directory: git writes objects before the refs that name them.
GIT_OBJECTS = "objects"


class BackupError(HyperhiveError):
    """The backup cannot be made; the message says why and what to do."""


@dataclass
class BackupReport:
    """What ``backup`` copied."""

    destination: Path
    database_pages: int = 0
    files: int = 0
    skipped: list[str] = field(default_factory=list)
    """Entries left out, each with the reason (sockets, files deleted meanwhile)."""


def backup(paths: StatePaths, dest: Path) -> BackupReport:
    """Copy the state root of ``paths`` to the new directory ``dest``.

    :raises BackupError: ``dest`` exists or lies inside the state root, there is
        no database, a file kept changing while it was copied, or the state dir
        is not ours to read.
    """
    try:
        return _backup(paths, dest.absolute())
    except PermissionError as exc:
        raise BackupError(
            f"permission denied on {exc.filename or paths.root}; run the backup as root or as the hive's user"
        ) from None


def _backup(paths: StatePaths, dest: Path) -> BackupReport:
    root = paths.root.resolve()
    if not paths.database.is_file():
        raise BackupError(
            f"no hive database at {paths.database}; point --config at the hive's config, "
            "whose [hive] state_dir names the state dir to back up"
        )
    if dest.exists() or dest.is_symlink():
        raise BackupError(f"{dest} already exists; give a new path (a backup never merges into a directory)")
    if dest.resolve().is_relative_to(root):
        raise BackupError(f"{dest} is inside the state dir {root}; put the backup somewhere else")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} does not exist; create it first")
    not_copied = {paths.database.name + suffix for suffix in DATABASE_SUFFIXES}
    not_copied |= {paths.host_socket.name, *REBUILT_DIRS}
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        report = BackupReport(dest)
        report.database_pages = backup_database(paths.database, partial / paths.database.name)
        copy_tree(root, partial, report, skip=frozenset(not_copied))
        os.sync()  # the rename below promises a whole backup, on disk
        partial.rename(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return report


def backup_database(source: Path, target: Path) -> int:
    """Copy the sqlite database ``source`` to ``target`` as of now; return its page count."""
    try:
        return _copy_database(source, target)
    except sqlite3.Error as exc:
        raise BackupError(
            f"cannot copy the database {source}: {exc}; check that you may read the state dir "
            "(run as root or as the hive's user) and that the destination has room"
        ) from None


def _copy_database(source: Path, target: Path) -> int:
    with (
        closing(sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)) as reader,
        closing(sqlite3.connect(target)) as copy,
    ):
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master")  # pins the snapshot every step copies from
        reader.backup(copy, pages=PAGES_PER_STEP)
        reader.execute("COMMIT")
        return copy.execute("PRAGMA page_count").fetchone()[0]


def copy_tree(source: Path, target: Path, report: BackupReport, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy the directory ``source`` into the existing ``target``, never following symlinks.

    Below ``source`` every directory and file is opened relative to its parent's open
    descriptor, never by path: an agent that swaps a directory of its own for a
    symlink while the backup runs cannot lead the copy out of the state dir.

    :param skip: names in ``source`` itself to leave out.
    """
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _copy_dir(fd, source, target, report, skip)
    finally:
        os.close(fd)


def _copy_dir(dir_fd: int, source: Path, target: Path, report: BackupReport, skip: frozenset[str]) -> None:
    for entry in _ordered(dir_fd):
        path, into = source / entry.name, target / entry.name
        if entry.name in skip:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(entry.name, dir_fd=dir_fd), into)
            elif stat.S_ISDIR(info.st_mode):
                into.mkdir(mode=0o700)
                sub = _open_nofollow(entry.name, dir_fd, os.O_DIRECTORY)
                try:
                    _copy_dir(sub, path, into, report, frozenset())
                finally:
                    os.close(sub)
            elif stat.S_ISREG(info.st_mode):
                info = copy_file(entry.name, into, dir_fd=dir_fd, shown=path)
                report.files += 1
            else:
                report.skipped.append(f"{path} (not a regular file: a socket, fifo or device)")
                continue
        except FileNotFoundError:
            report.skipped.append(f"{path} (deleted or replaced while the backup ran)")
            continue
        _keep_metadata(into, info)


def _open_nofollow(name: str, dir_fd: int, flags: int) -> int:
    """``name`` in ``dir_fd``, read-only; a symlink or other kind swapped in since is gone (FileNotFoundError)."""
    try:
        # No following a symlink an agent swapped in, no blocking on a fifo.
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileNotFoundError(name) from None
        raise


def copy_file(name: str, target: Path, *, dir_fd: int, shown: Path) -> os.stat_result:
    """Copy the regular file ``name`` in ``dir_fd`` (``shown`` in messages), again if it changed
    meanwhile; return its status as copied."""
    for attempt in range(COPY_ATTEMPTS):
        fd = _open_nofollow(name, dir_fd, 0)
        with os.fdopen(fd, "rb") as reader:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise FileNotFoundError(shown)
            with open(target, "wb", opener=_private) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
            after = os.fstat(fd)
        if _version(before) == _version(after):
            return after
        time.sleep(0.05 * (attempt + 1))
    raise BackupError(
        f"{shown} kept changing while it was copied ({COPY_ATTEMPTS} tries); pause the agent that writes it "
        "(`hyperhive pause NAME`) or stop the hive, then run the backup again"
    )


def _ordered(dir_fd: int) -> Iterator[os.DirEntry[str]]:
    """Entries of the directory ``dir_fd``: files first, then subdirectories, ``objects`` last."""
    with os.scandir(dir_fd) as scan:
        entries = list(scan)
    files = [entry for entry in entries if not entry.is_dir(follow_symlinks=False)]
    directories = sorted(
        (entry for entry in entries if entry.is_dir(follow_symlinks=False)),
        key=lambda entry: (entry.name == GIT_OBJECTS, entry.name),
    )
    yield from sorted(files, key=lambda entry: entry.name)
    yield from directories


def _version(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _keep_metadata(path: Path, info: os.stat_result) -> None:
    """Give the copy the original's owner (as root: agents' uids), mode and times."""
    if os.geteuid() == 0:
        os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


@click.command(name="backup")
@click.argument("dest", type=click.Path(path_type=Path))
@pass_state
def backup_command(state: CliState, dest: Path) -> None:
    """Copy the state dir to the new directory DEST, consistently, while the hive runs."""
    from hyperhive_core.daemon import state_paths

    paths = state_paths(state.boot().config)
    report = backup(paths, dest)
    click.echo(
        f"backed up {paths.root} to {report.destination}: database {report.database_pages} pages, {report.files} files"
    )
    for entry in report.skipped:
        click.echo(f"  skipped {entry}")
