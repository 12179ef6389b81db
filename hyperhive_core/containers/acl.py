"""Search-only ACL grants, so an agent's uid can reach the host paths bwrap binds for it.

bwrap runs as the agent's uid and resolves every bind source by path before it
mounts, so each directory above a source must be searchable by that uid. The state
root is private to the daemon (0700); rather than open it to every local user, each
agent's uid gets a POSIX ACL entry ``user:<uid>:--x`` on just the directories above
its own binds: it can pass through, never list or read. An agent's uid only ever runs
inside its sandbox, whose mount namespace holds none of these directories.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

from hyperhive_core.errors import HyperhiveError

_XATTR = "system.posix_acl_access"
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_VERSION = 2
# Tags, in the order the kernel wants the entries.
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1

Acl = dict[tuple[int, int], int]
"""``(tag, id) -> permission bits``."""


class AclError(HyperhiveError):
    """A directory cannot be made searchable for an agent's uid."""


def ensure_reachable(path: Path, uid: int) -> list[Path]:
    """Make every directory above ``path`` searchable by ``uid``; return those changed.

    :raises AclError: a directory needs a grant and its filesystem has no ACLs.
    """
    changed = []
    for directory in reversed(path.parents):
        info = directory.stat()
        if info.st_uid == uid or info.st_mode & stat.S_IXOTH:
            continue
        if grant_search(directory, uid):
            changed.append(directory)
    return changed


def grant_search(directory: Path, uid: int) -> bool:
    """Add search permission for ``uid`` to ``directory``'s ACL; ``False`` if it had it."""
    acl = _read(directory)
    mask = acl.get((_MASK, _NO_ID), acl[(_GROUP_OBJ, _NO_ID)])
    if acl.get((_USER, uid), 0) & mask & _SEARCH:
        return False
    acl[(_USER, uid)] = acl.get((_USER, uid), 0) | _SEARCH
    # Adding only the search bit to the mask widens no other entry beyond search.
    acl[(_MASK, _NO_ID)] = mask | _SEARCH
    blob = _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(tag, perm, id_) for (tag, id_), perm in sorted(acl.items()))
    try:
        os.setxattr(directory, _XATTR, blob)
    except OSError as exc:
        raise AclError(
            f"cannot let uid {uid} pass through {directory} ({exc.strerror}); an agent's sandbox needs it. "
            f"Use a filesystem with POSIX ACLs for the state dir, or make {directory} searchable (chmod o+x)"
        ) from None
    return True


def _read(directory: Path) -> Acl:
    try:
        blob = os.getxattr(directory, _XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        mode = directory.stat().st_mode
        return {(_USER_OBJ, _NO_ID): mode >> 6 & 7, (_GROUP_OBJ, _NO_ID): mode >> 3 & 7, (_OTHER, _NO_ID): mode & 7}
    entries = _ENTRY.iter_unpack(blob[_HEADER.size :])
    return {(tag, id_ if tag in (_USER, _GROUP) else _NO_ID): perm for tag, perm, id_ in entries}
