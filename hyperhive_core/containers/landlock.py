"""Landlock scoping: a sandbox cannot reach the host's abstract unix sockets.

Abstract unix sockets have no file: they belong to the network namespace, so no bind
mount hides them, and an agent sharing the host's network could connect to any
daemon listening on one (a desktop session bus, a container runtime, ...). Landlock
ABI 6 (Linux 6.12) scopes them: a process in the domain may only connect to abstract
sockets created inside the same domain. It scopes signals the same way.
"""

from __future__ import annotations

import ctypes
import os

SCOPE_ABI = 6
"""The first Landlock ABI that can scope abstract unix sockets and signals."""

_SYS_CREATE_RULESET = 444  # the same number on every architecture
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1
_SCOPE_SIGNAL = 2
_PR_SET_NO_NEW_PRIVS = 38


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# Built here, not in the child: the child setup should only make syscalls.
_SCOPE_ONLY = _RulesetAttr(0, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    version = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(version, 0)


def restrict_scope() -> None:
    """Confine this process and everything it starts: no abstract unix sockets and no
    signals beyond the domain. Meant as the last step before exec (``preexec``).

    :raises OSError: the kernel refused (check ``abi_version() >= SCOPE_ABI`` first).
    """
    ruleset = _libc.syscall(
        _SYS_CREATE_RULESET, ctypes.byref(_SCOPE_ONLY), ctypes.c_size_t(ctypes.sizeof(_SCOPE_ONLY)), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        # Without CAP_SYS_ADMIN, Landlock requires no_new_privs; bwrap sets it anyway.
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if _libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
