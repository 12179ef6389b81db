"""The agent's notes file and its backups, handled without trusting what the agent left there.

The daemon may run as root while ``/state`` belongs to the agent, so a ``notes.md``
that is a symlink (to ``/etc/shadow``, say) is never followed: every open here is
``O_NOFOLLOW`` and only a regular file counts as notes. Backups live next to the
state dir, outside the agent's reach, and go when its state is purged.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from hyperhive_core import HyperhiveError

NOTES = "notes.md"
BACKUPS = "notes-backups"


class NotesError(HyperhiveError):
    """notes.md cannot be read or written back."""


def notes_size(path: Path) -> int | None:
    """The size of the notes file, or ``None`` when there is no regular file at ``path``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def read_notes(path: Path) -> bytes | None:
    """The notes' content, or ``None`` when there is no regular file at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            return None
        raise
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return file.read()


def write_notes(path: Path, content: bytes) -> None:
    """Put ``content`` back into the notes file, in place, keeping its owner.

    A symlink where the file was is replaced by a new file owned like the state dir.

    :raises NotesError: something other than a file or symlink sits at ``path``.
    """
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        fd = _create(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            path.unlink()
            fd = _create(path, flags)
        else:
            raise NotesError(f"cannot restore {path}: {exc.strerror}; move it away and restore the backup") from exc
    with os.fdopen(fd, "wb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotesError(f"cannot restore {path}: it is not a regular file; move it away and restore the backup")
        os.ftruncate(fd, 0)
        file.write(content)
        file.flush()
        os.fsync(fd)


def _create(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    _give_to_agent(fd, path.parent)
    return fd


def make_workdir(path: Path) -> None:
    """Create the empty directory the session starts in, owned like the state dir."""
    path.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _give_to_agent(fd, path.parent)
    finally:
        os.close(fd)


def _give_to_agent(fd: int, state_dir: Path) -> None:
    """Hand what the daemon created in a state dir to the dir's owner: root's would lock the agent out."""
    if os.geteuid() == 0:
        owner = os.stat(state_dir)
        os.fchown(fd, owner.st_uid, owner.st_gid)


class Backups:
    """Copies of one agent's notes taken before each compaction; the newest ``keep`` stay."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def save(self, content: bytes, run_id: int) -> Path:
        """Store ``content`` as the backup of compaction ``run_id``; drop the oldest beyond ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.directory / f"notes-{stamp}-{run_id:06d}.md"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(fd)
        for old in self.list()[: -self.keep]:
            old.unlink()
        return path

    def list(self) -> list[Path]:
        """Every backup, oldest first (the names sort by time)."""
        return sorted(self.directory.glob("notes-*.md"))
