"""The sandboxes' seccomp filter: every blocked call fails with EPERM, inside real bubblewrap
sandboxes and under the loader nspawn execs use, for 64-bit and 32-bit callers alike; what
agents run (git, the real Claude Code CLI) still works under it."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys

import pyseccomp
import pytest
import trio
from test_bwrap import TEST_UIDS, Hive, needs_bwrap

from hyperhive_core.containers import seccomp
from hyperhive_core.containers.uids import m005_agent_uids
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.store import Store
from hyperhive_core.testing import needs_claude, operator_reply, running_hive

NOWHERE = "/nonexistent-hyperhive"
AT_FDCWD = -100
CLONE_FS = 0x200

# Each blocked call, with arguments that make it fail harmlessly when nothing filters it,
# even for root (a missing path, a bad fd, a wrong magic number) and with an errno other
# than EPERM: an EPERM can then only come from the filter. "$pid" is the caller's pid.
CALLS: dict[str, list[object]] = {
    "mount": ["none", NOWHERE, "tmpfs", 0, 0],
    "umount2": [NOWHERE, 0],
    "pivot_root": [NOWHERE, NOWHERE],
    "move_mount": [-1, NOWHERE, -1, NOWHERE, 0],
    "open_tree": [AT_FDCWD, NOWHERE, 0],
    "fsopen": ["hyperhive-no-such-fs", 0],
    "fsmount": [-1, 0, 0],
    "fsconfig": [-1, 0, 0, 0, 0],
    "fspick": [AT_FDCWD, NOWHERE, 0],
    "mount_setattr": [AT_FDCWD, NOWHERE, 0, 0, 0],
    "setns": [-1, 0],
    "keyctl": [0, -1, 0],  # KEYCTL_GET_KEYRING_ID of the thread keyring, not creating it
    "add_key": [0, 0, 0, 0, 0],
    "request_key": [0, 0, 0, 0],
    "bpf": [0x7FFF, 0, 0],  # no such command
    "perf_event_open": [0, 0, -1, -1, 0],
    "userfaultfd": [0x7FFF0000],  # no such flags
    "kexec_load": [0, 999, 0, 0],  # more segments than allowed
    "kexec_file_load": [-1, -1, 0, 0, 0x7FFF],
    "init_module": [0, 0, 0],
    "finit_module": [-1, 0, 0],
    "delete_module": ["hyperhive_no_such_module", 0],
    "swapon": [NOWHERE, 0],
    "swapoff": [NOWHERE],
    "reboot": [0, 0, 0, 0],  # wrong magic
    "acct": [NOWHERE],
    "settimeofday": [0, 0],  # sets nothing
    "clock_settime": [0x7FFF, 0],  # no such clock
    "ptrace": [16, 0x3FFFFFFF, 0, 0],  # PTRACE_ATTACH to no such pid
    "process_vm_readv": ["$pid", 0, 0, 0, 0, 0],  # reads nothing, from itself
    "process_vm_writev": ["$pid", 0, 0, 0, 0, 0],
    "open_by_handle_at": [-1, 0, 0],
    "name_to_handle_at": [AT_FDCWD, "/", 0, 0, 0],
    "io_uring_setup": [0, 0],  # parameters at address 0
    "io_uring_enter": [-1, 0, 0, 0, 0, 0],
    "io_uring_register": [-1, 0, 0, 0],
    # New namespaces, by their flags: unfiltered, a new user namespace needs no privilege.
    "unshare": [seccomp.CLONE_NEWUSER],
    "unshare(CLONE_NEWNET)": [seccomp.CLONE_NEWNET],
    "clone": [seccomp.CLONE_NEWUSER | CLONE_FS],  # a pair the kernel refuses: never a child
    "clone3": [0, 0],
}
# Calls only 32-bit callers have; they go through i386 below.
COMPAT_ONLY = {"umount", "stime", "clock_settime64"}

# Each call in a child of its own (a new user namespace must not carry over to the next
# call); prints {name: errno, or 0 for success}.
PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {}
for name, nr, args in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        values = [
            ctypes.c_long(os.getpid()) if arg == "$pid"
            else ctypes.c_char_p(arg.encode()) if isinstance(arg, str)
            else ctypes.c_long(arg)
            for arg in args
        ]
        result = libc.syscall(ctypes.c_long(nr), *values)
        os.write(write, str(ctypes.get_errno() if result < 0 else 0).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    results[name] = int(os.read(read, 16) or -1)
    os.close(read)
print(json.dumps(results))
"""

# One i386 system call through int 0x80 from a 64-bit process: the kernel's compat entry,
# which a filter sees as the i386 architecture. Prints the errno, or 0.
COMPAT_CALL = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long nr = strtol(argv[1], 0, 0), a = strtol(argv[2], 0, 0), b = strtol(argv[3], 0, 0);
    long ret;
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(0L) : "memory");
    printf("%ld\n", ret < 0 && ret > -4096 ? -ret : 0);
    return 0;
}
"""
# i386 calls with arguments that fail harmlessly unfiltered, as above.
COMPAT_CALLS = {
    "mount": [0, 0],
    "umount": [0, 0],
    "stime": [0, 0],
    "clock_settime64": [0x7FFF, 0],
    "setns": [-1, 0],
    "keyctl": [0, -1],
    "ptrace": [16, 0x3FFFFFFF],
    "unshare": [seccomp.CLONE_NEWUSER, 0],
    "clone": [seccomp.CLONE_NEWUSER | CLONE_FS, 0],
    "clone3": [0, 0],
}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the unfiltered calls need root to pass capability checks")


def table(arch: int = pyseccomp.Arch.NATIVE) -> list[tuple[str, int, list[object]]]:
    """``CALLS`` as ``[name, number for arch, args]``."""
    return [(name, pyseccomp.resolve_syscall(arch, name.partition("(")[0]), args) for name, args in CALLS.items()]


def denied(names: object) -> dict[str, int]:
    """What the filter answers each call: EPERM, but ENOSYS for clone3."""
    return {name: errno.ENOSYS if name == "clone3" else errno.EPERM for name in names}


def run_here(argv: list[str], *, filtered: bool, **run: object) -> str:
    """``argv``'s output, run on the host; ``filtered``: under the program, loaded the way an
    nspawn exec loads it (``seccomp.main``)."""
    fd = seccomp.program_fd(seccomp.compile_program())
    try:
        result = subprocess.run(
            seccomp.loader_argv(fd, argv) if filtered else argv,
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **run,
        )
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def probe(calls: list[tuple[str, int, list[object]]], *, filtered: bool, **run: object) -> dict[str, int]:
    return json.loads(run_here(["/usr/bin/python3", "-c", PROBE, json.dumps(calls)], filtered=filtered, **run))


@pytest.fixture
async def sandboxes(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    hive = Hive(root, store)
    try:
        yield hive
    finally:
        await hive.close()
        store.close()


# -- the program ---------------------------------------------------------------------


def test_every_blocked_call_is_probed_and_known_to_libseccomp():
    for name in seccomp.BLOCKED:
        assert pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) != -1, name
    probed = {name.partition("(")[0] for name in CALLS} - {"unshare", "clone", "clone3"}
    assert set(seccomp.BLOCKED) == probed | COMPAT_ONLY


@needs_root
def test_the_program_denies_each_call_even_to_root():
    """As root, with every capability: unfiltered, each call fails on its bad arguments or
    works; under the filter, every one fails with EPERM (clone3 with ENOSYS)."""
    unfiltered = probe(table(), filtered=False)
    assert {name: code for name, code in unfiltered.items() if code == errno.EPERM} == {}
    assert unfiltered["unshare"] == unfiltered["unshare(CLONE_NEWNET)"] == 0
    assert unfiltered["clone3"] != errno.ENOSYS
    assert probe(table(), filtered=True) == denied(CALLS)


@needs_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the 32-bit ABIs checked are x86-64's")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc compiles the i386 caller (apt-get install gcc)")
def test_32_bit_callers_are_denied_the_same(tmp_path):
    helper = tmp_path / "compat_call"
    subprocess.run(["gcc", "-O", "-x", "c", "-o", str(helper), "-"], input=COMPAT_CALL, text=True, check=True)
    if subprocess.run([str(helper), "20", "0", "0"], capture_output=True, check=False).returncode != 0:
        pytest.skip("this kernel runs no i386 code (no IA32 emulation)")

    def i386(filtered: bool) -> dict[str, int]:
        results = {}
        for name, args in COMPAT_CALLS.items():
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.X86, name)
            results[name] = int(run_here([str(helper), str(nr), *map(str, args)], filtered=filtered))
        return results

    unfiltered = i386(filtered=False)
    assert {name: code for name, code in unfiltered.items() if code in (errno.EPERM, errno.ENOSYS)} == {}
    assert i386(filtered=True) == denied(COMPAT_CALLS)
    # x32 (x86-64's other ABI): its numbers carry a bit of their own. Kernels mostly leave
    # x32 out (ENOSYS); the filter answers first either way.
    x32 = table(pyseccomp.Arch.X32)
    assert all(nr & 0x40000000 for _, nr, _ in x32)
    assert probe(x32, filtered=True) == denied(CALLS)


def test_the_loader_refuses_what_is_not_a_program(tmp_path):
    loader = [sys.executable, "-I", "-S", seccomp.__file__]
    usage = subprocess.run(loader, capture_output=True, text=True, check=False)
    assert usage.returncode == 1
    assert usage.stderr.startswith("usage: seccomp.py FD PROGRAM [ARGS...]: run PROGRAM under the BPF program")
    with open(tmp_path / "garbage", "wb+") as garbage:
        garbage.write(b"12345")
        garbage.seek(0)
        fd = garbage.fileno()
        result = subprocess.run([*loader, str(fd), "true"], pass_fds=[fd], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (1, f"seccomp.py: fd {fd} holds 5 bytes, not a BPF program\n")


def test_the_program_is_sealed_once_handed_over():
    fd = seccomp.program_fd(seccomp.compile_program())
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"\0" * 8)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def test_without_the_bindings_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # what a failed import leaves
    with pytest.raises(HyperhiveError, match=r"install libseccomp2 .*pip install pyseccomp; `make install` does both"):
        seccomp.compile_program()


# -- in a real sandbox -----------------------------------------------------------------


@needs_bwrap
async def test_each_blocked_call_fails_with_eperm_inside_a_sandbox(sandboxes):
    alice = await sandboxes.agent("alice")
    script = (
        f"grep ^Seccomp: /proc/self/status; /usr/bin/python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(table()))}"
    )
    rc, out, err = await sandboxes.run(alice, script)
    assert (rc, err) == (0, "")
    mode, results = out.split("\n", 1)
    assert mode.split() == ["Seccomp:", "2"]  # a filter
    assert json.loads(results) == denied(CALLS)
    # The same uid on the host, with no filter, makes many of them: there the EPERM
    # above can only be the filter's (the rest are checked against root above).
    outside = probe(table(), filtered=False, user=TEST_UIDS, group=TEST_UIDS, extra_groups=[], cwd="/")
    reachable = {name for name, code in outside.items() if code != errno.EPERM}
    assert reachable >= {
        "unshare",
        "clone",
        "clone3",
        "setns",
        "keyctl",
        "bpf",
        "ptrace",
        "process_vm_readv",
        "mount",
        "io_uring_setup",
    }


@needs_bwrap
async def test_a_sandbox_can_name_no_process_outside_it(sandboxes):
    """ptrace and process_vm_* find processes by pid, and a sandbox's pid namespace holds
    only its own: they could reach nothing outside even unfiltered. The filter denies them
    anyway, since no agent program debugs another."""
    alice = await sandboxes.agent("alice")
    script = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"try:\n    os.kill({os.getpid()}, 0)\nexcept ProcessLookupError:\n    print('no such process')\n"
        "print(sorted(int(name) for name in os.listdir('/proc') if name.isdigit()), os.getpid())\n"
        "print(libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))\n"
    )
    rc, out, err = await sandboxes.run(alice, f"exec /usr/bin/python3 -c {shlex.quote(script)}")
    assert (rc, err) == (0, "")
    # This test's own pid is nothing there; the sandbox's init and the probe are all there is.
    assert out.splitlines() == ["no such process", "[1, 2] 2", "-1 Operation not permitted"]


# -- what agents run -------------------------------------------------------------------


SCENARIO = r"""
[[agents.manager.rules]]
when = "from operator (text) ---\nprobe"
[[agents.manager.rules.steps]]
tool = "Bash"
input.description = "git, a new namespace, and the filter"
input.command = '''
cd /state && git init --quiet probe && cd probe
git -c user.name=hive -c user.email=hive@localhost commit --quiet --allow-empty -m 'committed under seccomp'
git log --format=%s
unshare --user true 2>&1
grep ^Seccomp: /proc/self/status'''
[[agents.manager.rules.steps]]
tool = "send"
input = { to = "operator", body = "{{result}}" }
[[agents.manager.rules.steps]]
text = "ok"
"""


@needs_claude
@needs_bwrap
@pytest.mark.slow
async def test_claude_code_and_git_work_under_the_filter(make_pm, tmp_path):
    sandboxes = {"container_backend": "bwrap"}
    uids = {"uid_range_start": 62900, "uid_range_size": 10}  # clear of a real hive's and the other tests'
    async with running_hive(tmp_path, make_pm(), SCENARIO, hive=sandboxes, bwrap=uids) as hive:
        await hive.broker.send("operator", "manager", "probe")
        with trio.fail_after(90):
            reply = await operator_reply(hive, "manager")
    assert "committed under seccomp" in reply
    assert "unshare: unshare failed: Operation not permitted" in reply
    assert "Seccomp:\t2" in reply
