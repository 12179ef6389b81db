"""Spawning a backend's process: pipes, a fresh terminal, waiting on a pidfd, signals, uid drop."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import trio

from hyperhive_core.containers.spawn import SpawnedProcess

PYTHON = sys.executable


def start(code: str, **kwargs) -> SpawnedProcess:
    return SpawnedProcess.start([PYTHON, "-c", code], env={"PATH": os.environ["PATH"]}, cwd="/", **kwargs)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(10):
        while marker not in data:
            chunk = await stream.receive_some()
            assert chunk, f"EOF before {marker!r}; got {data!r}"
            data += chunk
    return data


async def test_pipes_carry_stdin_stdout_and_stderr_separately():
    process = start("import sys; data = sys.stdin.read(); print(data.upper()); print('oops', file=sys.stderr)")
    await process.stdin.send_all(b"hello")
    await process.stdin.aclose()
    assert await read_all(process.stdout) == b"HELLO\n"
    assert await read_all(process.stderr) == b"oops\n"
    assert await process.wait() == 0
    assert process.returncode == 0


async def test_wait_from_many_tasks_and_returncode():
    process = start("import sys, time; time.sleep(0.3); sys.exit(3)")
    assert process.returncode is None
    results = []

    async def waiter():
        results.append(await process.wait())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
    assert results == [3, 3, 3]
    assert process.returncode == 3


async def test_kill_and_send_signal():
    killed = start("import time; time.sleep(60)")
    killed.kill()
    assert await killed.wait() == -signal.SIGKILL
    killed.kill()  # already reaped: nothing happens

    terminated = start("import time; time.sleep(60)")
    terminated.send_signal(signal.SIGTERM)
    assert await terminated.wait() == -signal.SIGTERM


async def test_child_leads_its_own_session_and_runs_preexec():
    niceness = os.nice(0)
    process = start("import os; print(os.getsid(0) == os.getpid(), os.nice(0))", preexec=lambda: os.nice(5))
    assert (await read_all(process.stdout)).split() == [b"True", str(niceness + 5).encode()]
    assert await process.wait() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
async def test_user_drops_uid_gid_and_supplementary_groups():
    process = SpawnedProcess.start(
        ["grep", "-E", "^(Uid|Gid|Groups):", "/proc/self/status"], env={}, cwd="/", user=61950
    )
    uids, gids, groups = (line.split()[1:] for line in (await read_all(process.stdout)).decode().splitlines())
    assert await process.wait() == 0
    assert uids == gids == ["61950"] * 4
    assert groups == []


async def test_pty_is_the_controlling_terminal_and_resizes():
    process = start(
        "import os, sys\n"
        "print('tty', os.isatty(0), os.ttyname(0) == os.ttyname(1), open('/dev/tty').isatty(), flush=True)\n"
        "print('size', *os.get_terminal_size(0), flush=True)\n"
        "sys.stdin.readline()\n"
        "print('size', *os.get_terminal_size(0), flush=True)\n",
        pty=True,
    )
    assert process.stderr is None
    assert process.stdin is process.stdout
    assert b"tty True True True" in await read_until(process.stdout, b"size 80 24")
    process.resize(40, 132)
    await process.stdin.send_all(b"\n")
    await read_until(process.stdout, b"size 132 40")
    assert await process.wait() == 0
    assert await read_all(process.stdout) == b""  # the kernel's EIO, read as EOF


async def test_resize_needs_a_terminal():
    process = start("pass")
    with pytest.raises(RuntimeError, match="pty=True"):
        process.resize(10, 10)
    assert await process.wait() == 0


async def test_missing_program_leaks_no_descriptors():
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        SpawnedProcess.start(["/nonexistent/program"], env={}, cwd="/")
    with pytest.raises(FileNotFoundError):
        SpawnedProcess.start(["/nonexistent/program"], env={}, cwd="/", pty=True)
    assert len(os.listdir("/proc/self/fd")) == before
