"""The seccomp filter every agent process runs under: system calls an agent never needs fail.

A blocked call fails with EPERM, never a kill, so a program that tries one gets an
error it can report. Blocked: new namespaces (user namespaces above all, which would
make the agent root over a fresh set of kernel code), mounts, keyrings, BPF,
perf events, kernel modules and kexec, tracing or reading other processes,
swap, reboot, the clock, process accounting, userfaultfd, file handles and io_uring.
``clone3`` fails with ENOSYS instead: its flags sit in memory a filter cannot read,
and on ENOSYS libc falls back to ``clone``, whose flags it can.

The filter is compiled once, with libseccomp (through ``pyseccomp``), into a BPF
program for the host's architecture and its 32-bit ones (i386 and x32 on x86-64,
arm on aarch64), so a 32-bit binary is filtered the same way. bwrap loads it from
a file descriptor (``--seccomp FD``) as the last step before it runs the command.
An exec into an nspawn container loads it by running this file as a script
(``python -I -S seccomp.py FD PROGRAM ARGS...``, see :func:`main`), inside the
container, with the standard library only: nothing here imports more at the top.
docs/security.md has the list and why each is there.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sys
from collections.abc import Sequence

BLOCKED: tuple[str, ...] = (
    # Mounts: a sandbox's mounts are set up for it, and only root may make more.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    # Joining other namespaces.
    "setns",
    # Kernel keyrings are not namespaced: a key could reach beyond the sandbox.
    "keyctl",
    "add_key",
    "request_key",
    # Kernel attack surface no agent program needs.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    # The host's clock.
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    # Other processes: the pid namespace already shows only the sandbox's own, and no
    # agent program debugs another, so tracing and reading their memory go entirely.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # Files by handle, which bypass the mount namespace's view of paths.
    "open_by_handle_at",
    "name_to_handle_at",
    # io_uring: its queued operations run in the kernel where no seccomp filter sees them,
    # and it is a large attack surface; libuv and others fall back to plain calls.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
"""Calls that fail with EPERM whatever their arguments."""

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# clone() keeps the child's exit signal in its flags' low byte, where CLONE_NEWTIME
# sits for unshare(): clone() cannot make a time namespace, and the bit is no flag there.
CLONE_NAMESPACES = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
UNSHARE_NAMESPACES = (*CLONE_NAMESPACES, CLONE_NEWTIME)

# What a container's own systemd (a NixOS container's init) does as it boots, runs and
# stops: mounts, namespaces and keyrings for its services' sandboxing, BPF for their
# device and firewall policy, file handles to tell mount points, reboot() to stop the
# container. nspawn's filter on such a container's init leaves them allowed; every
# exec into it gets the whole filter.
CONTAINER_INIT_NEEDS = frozenset(
    {
        *("mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree"),
        *("fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"),
        *("setns", "keyctl", "add_key", "request_key", "bpf", "name_to_handle_at", "reboot"),
    }
)

# Each architecture's 32-bit ABIs, as libseccomp names them (SCMP_ARCH_*).
COMPAT_ARCHES = {"x86_64": ("X86", "X32"), "aarch64": ("ARM",)}

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def compile_program() -> bytes:
    """The filter as a BPF program (``struct sock_filter`` array), what ``bwrap --seccomp`` reads.

    :raises HyperhiveError: libseccomp or its Python bindings are missing.
    """
    from hyperhive_core.errors import HyperhiveError

    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 is not installed
        raise HyperhiveError(
            f"cannot build the sandboxes' seccomp filter ({exc}): install libseccomp2 "
            "(apt-get install libseccomp2) and pyseccomp into the hive's environment (pip install pyseccomp; "
            "`make install` does both)"
        ) from None
    denied = pyseccomp.ERRNO(errno.EPERM)
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for arch in COMPAT_ARCHES.get(os.uname().machine, ()):
        rules.add_arch(getattr(pyseccomp.Arch, arch))
    for name in BLOCKED:
        rules.add_rule(denied, name)
    rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    for syscall, flags in (("clone", CLONE_NAMESPACES), ("unshare", UNSHARE_NAMESPACES)):
        for flag in flags:  # rules on one call are alternatives: any of the flags is refused
            rules.add_rule(denied, syscall, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    memfd = os.memfd_create("hyperhive-seccomp", os.MFD_CLOEXEC)
    with open(memfd, "w+b") as file:
        rules.export_bpf(file)
        file.seek(0)
        return file.read()


def program_fd(program: bytes) -> int:
    """A sealed memfd holding ``program``, at its start, for a child to read (close-on-exec:
    pass it with ``pass_fds``). Sealed: nothing can change it once handed over."""
    fd = os.memfd_create("hyperhive-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def nspawn_flags(*, container_init: bool) -> list[str]:
    """``systemd-nspawn`` options that deny :data:`BLOCKED` to the container's payload,
    one call each (nspawn combines them). nspawn's filter cannot look at arguments, so
    ``clone`` and ``unshare`` stay with the execs' own filter.

    :param container_init: the payload is a container's own systemd, which keeps
        :data:`CONTAINER_INIT_NEEDS`.
    """
    kept = CONTAINER_INIT_NEEDS if container_init else frozenset()
    return [f"--system-call-filter=~{name}" for name in BLOCKED if name not in kept]


def loader_argv(fd: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run under the program in ``fd`` (see :func:`main`), by this interpreter
    without site or environment (``-I -S``): where it runs, only the standard library
    and this file need to be reachable."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(fd), *argv]


def load(program: bytes) -> None:
    """Confine this process and everything it starts with ``program``; ``no_new_privs`` first,
    as the kernel requires of a process without CAP_SYS_ADMIN."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prog = SockFprog(len(program) // _SOCK_FILTER_SIZE, program)
    ulong = ctypes.c_ulong
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def main(args: Sequence[str]) -> None:
    """``seccomp.py FD PROGRAM ARGS...``: read the BPF program from ``FD``, load it, exec ``PROGRAM``."""
    if len(args) < 2 or not args[0].isdigit():
        sys.exit("usage: seccomp.py FD PROGRAM [ARGS...]: run PROGRAM under the BPF program read from FD")
    fd = int(args[0])
    with open(fd, "rb") as file:
        program = file.read()
    if not program or len(program) % _SOCK_FILTER_SIZE:
        sys.exit(f"seccomp.py: fd {fd} holds {len(program)} bytes, not a BPF program")
    try:
        load(program)
        os.execvp(args[1], list(args[1:]))  # noqa: S606 - an argv, as given
    except OSError as exc:
        sys.exit(f"seccomp.py: cannot run {args[1]}: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
