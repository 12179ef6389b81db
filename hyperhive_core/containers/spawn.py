"""Starting a backend's child process: pipes or a fresh terminal, its exit watched by a pidfd.

``trio.lowlevel.open_process`` forks in a worker thread. A child that asked to die with
its parent (bwrap's ``--die-with-parent`` sets ``PR_SET_PDEATHSIG``) really dies with
the parent *thread*, and trio retires idle worker threads after 10 s. So the fork
happens here, on the event loop's own thread, which lives as long as the daemon; it
blocks for a few milliseconds. The exit is awaited on a pidfd rather than in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

import trio

DEFAULT_TERMINAL_SIZE = (24, 80)


class TerminalStream(trio.abc.Stream):
    """The master side of a pty. Once the child side is closed a read returns EOF (``b""``),
    where the kernel reports EIO."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EIO:
                return b""
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def fileno(self) -> int:
        return self._stream.fileno()


class SpawnedProcess:
    """A child process with trio streams; implements ``ContainerProcess``.

    Start one with ``SpawnedProcess.start``. The child leads its own session, so
    ``os.killpg(process.pid, ...)`` reaches whatever it started in its process group.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: trio.abc.SendStream,
        stdout: trio.abc.ReceiveStream,
        stderr: trio.abc.ReceiveStream | None,
        terminal: TerminalStream | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._terminal = terminal
        # Opened before anyone can reap the child, so it always names this process.
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        self._wait_lock = trio.Lock()

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | str,
        pty: bool = False,
        user: int | None = None,
        pass_fds: Sequence[int] = (),
        preexec: Callable[[], None] | None = None,
        cgroups: Sequence[int] = (),
    ) -> Self:
        """Start ``argv`` in a new session, from the calling (event loop) thread.

        :param pty: give the child a fresh terminal as its stdin, stdout, stderr and
            controlling tty; else three pipes.
        :param user: run as this uid, with the group of the same number and no
            supplementary groups (the daemon must be root).
        :param pass_fds: descriptors the child inherits, besides the standard three.
        :param preexec: run in the child just before exec, after the privilege drop.
        :param cgroups: open ``cgroup.procs`` files the child moves itself into,
            before it drops privileges or runs anything (see ``_child_setup``).
        """
        child_setup = _child_setup(user, cgroups, pty, preexec)
        if pty:
            master, slave = os.openpty()
            _set_size(master, *DEFAULT_TERMINAL_SIZE)
            ours, theirs = [master], (slave, slave, slave)
        else:
            stdin_read, stdin_write = os.pipe()
            stdout_read, stdout_write = os.pipe()
            stderr_read, stderr_write = os.pipe()
            ours, theirs = [stdin_write, stdout_read, stderr_read], (stdin_read, stdout_write, stderr_write)
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=theirs[0],
                stdout=theirs[1],
                stderr=theirs[2],
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                # Safe here despite the daemon's threads: the setup makes plain syscalls
                # (write, setresuid, ioctl, prctl, landlock) and takes none of the locks a
                # thread could hold.
                preexec_fn=child_setup,  # noqa: PLW1509
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in set(theirs):
                os.close(fd)
        if pty:
            terminal = TerminalStream(master)
            return cls(popen, terminal, terminal, None, terminal)
        streams = [trio.lowlevel.FdStream(fd) for fd in ours]
        return cls(popen, streams[0], streams[1], streams[2], None)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (``-N`` for signal N), else ``None``."""
        result = self._popen.poll()
        if result is not None:
            self._close_pidfd()
        return result

    async def wait(self) -> int:
        """Wait for the process to exit; return its exit status."""
        async with self._wait_lock:
            if self._popen.poll() is None:
                if self._pidfd is not None:
                    # ``returncode`` may close the pidfd under us once the child has exited.
                    with contextlib.suppress(trio.ClosedResourceError):
                        await trio.lowlevel.wait_readable(self._pidfd)
                self._popen.wait()  # the pidfd said it exited: this reaps without blocking
            self._close_pidfd()
        assert self._popen.returncode is not None
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process; nothing happens once it has been reaped."""
        self._popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the process."""
        self._popen.kill()

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal's size; the process gets SIGWINCH.

        :raises RuntimeError: the process was started with pipes, not a terminal.
        """
        if self._terminal is None:
            raise RuntimeError("resize needs a process started with pty=True")
        _set_size(self._terminal.fileno(), rows, cols)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _child_setup(
    user: int | None, cgroups: Sequence[int], pty: bool, preexec: Callable[[], None] | None
) -> Callable[[], None] | None:
    """What the child does between fork and exec, in this order:

    1. join its cgroups, still as root. Nothing of the new program has run yet, so
       nothing can fork outside the cgroup (writing the pid from the parent after the
       spawn would leave that window), and the write needs root: the agent's uid may
       not move itself into root's cgroup. ``0`` names the writing process.
    2. drop to ``user`` (same-numbered group, no supplementary groups).
    3. take the pty as its controlling terminal: without one a shell has no job
       control, and ^C sends no SIGINT.
    4. ``preexec``.
    """
    if user is None and not cgroups and not pty:
        return preexec

    def setup() -> None:
        for fd in cgroups:
            os.write(fd, b"0")
        if user is not None:
            os.setgroups([])
            os.setresgid(user, user, user)
            os.setresuid(user, user, user)
        if pty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if preexec is not None:
            preexec()

    return setup
