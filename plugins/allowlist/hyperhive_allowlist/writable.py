"""Where an agent's Bash commands may write: the ``[allowlist] writable`` grants.

A grant is an absolute path as the agent sees it, where ``*`` stands for any text
within one path component and a whole ``**`` component for any number of
components: ``/state/work/**`` is that directory and everything under it,
``/state/out/*.txt`` the text files directly in it.

Hidden names are never writable, whatever the grants say: below a grant's literal
prefix, no component may start with ``.``. They configure the programs the agent
runs (``.git/config``, ``.claude/``, ``.bashrc``, ``.npmrc``…).

Stdlib only: the checker imports it inside the agent's sandbox.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from hyperhive_allowlist.patterns import segments_match

MAX_GRANTS = 100
MAX_GRANT_LENGTH = 500
ANY = "**"
DEFAULT_WRITABLE = ["/state/**", "/tmp/**"]  # noqa: S108 - the agent's own /tmp
STATE = "/state"
"""How grants name the agent's state dir, whatever path it has on this backend."""


class BadGrant(ValueError):
    """A grant the allow-list cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class Grant:
    """One compiled ``writable`` entry."""

    source: str
    parts: tuple[tuple[str, ...] | None, ...]
    """Per path component: its literal text around each ``*``, or ``None`` for ``**``."""
    fixed: int
    """How many leading components have no wildcard: hidden names are refused below them."""

    def matches(self, components: Sequence[str], *, wild_from: int | None = None) -> bool:
        """Whether the path with these components (the root's empty one excluded) is granted.

        :param wild_from: the components from this index on stand for any name (a glob,
            or a name the program picks), so only a ``*`` or ``**`` of the grant matches them.
        """
        if any(name.startswith(".") for name in components[self.fixed :]):
            return False
        # The grant components each path prefix may have reached: at most path length times grant length.
        reached = {0}
        for position, name in enumerate(components):
            wild = wild_from is not None and position >= wild_from
            following: set[int] = set()
            for index in _closure(reached, self.parts):
                if index == len(self.parts):
                    continue
                part = self.parts[index]
                if part is None:
                    following.add(index)  # ** takes this component and may take more
                elif part == ("", "") if wild else segments_match(part, name):
                    following.add(index + 1)
            reached = following
            if not reached:
                return False
        return len(self.parts) in _closure(reached, self.parts)


def _closure(reached: set[int], parts: tuple[tuple[str, ...] | None, ...]) -> set[int]:
    """``reached`` plus what a ``**`` matching no component more leads on to."""
    out = set(reached)
    for start in reached:
        index = start
        while index < len(parts) and parts[index] is None:
            index += 1
            out.add(index)
    return out


def compile_grant(source: str) -> Grant:
    """Parse one grant; :class:`BadGrant` says what is wrong with it.

    Hidden names in it are not refused here: the agent's state dir may have one in its
    host path (``~/.local/share/…``), where the grants reach the checker.
    """
    problem = _problem(source) if isinstance(source, str) else "must be a string"
    if problem:
        raise BadGrant(f"writable path {source!r} {problem}")
    names = [] if source == "/" else source[1:].split("/")
    parts = tuple(None if name == ANY else tuple(name.split("*")) for name in names)
    fixed = next((index for index, name in enumerate(names) if "*" in name), len(names))
    return Grant(source, parts, fixed)


def compile_grants(sources: list[str]) -> list[Grant]:
    """Compile a whole list; the first bad grant raises :class:`BadGrant`."""
    if len(sources) > MAX_GRANTS:
        raise BadGrant(f"has {len(sources)} paths; at most {MAX_GRANTS} are allowed")
    return [compile_grant(source) for source in sources]


def resolved(grant: Grant) -> Grant:
    """``grant`` with symlinks in its literal prefix followed, as the paths it is matched
    against are; shown as written."""
    names = grant.source.split("/")[1:]
    prefix = "/" + "/".join(names[: grant.fixed])
    real = os.path.realpath(prefix)
    if real == prefix:
        return grant
    rest = "/".join(names[grant.fixed :])
    again = compile_grant(real.rstrip("/") + "/" + rest if rest else real)
    return Grant(grant.source, again.parts, again.fixed)


def grant_problem(source: object) -> str | None:
    """Why ``source`` is not a usable grant, in a sentence; ``None`` when it is."""
    if not isinstance(source, str):
        return f"writable path {source!r} must be a string"
    try:
        compile_grant(source)
    except BadGrant as exc:
        return str(exc)
    if any(name.startswith(".") for name in source.split("/")):
        return (
            f"writable path {source!r} names a hidden file or directory; "
            "those configure programs and are never writable"
        )
    return None


def for_state(sources: list[str], state: str) -> list[str]:
    """The grants with ``/state`` replaced by where the agent sees its state dir."""
    return [
        state + source[len(STATE) :] if posixpath.commonpath([source, STATE]) == STATE else source for source in sources
    ]


def _problem(source: str) -> str | None:
    if not source.startswith("/"):
        return "must be absolute, as the agent sees it (its state dir is /state)"
    if len(source) > MAX_GRANT_LENGTH:
        return f"is longer than {MAX_GRANT_LENGTH} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in source):
        return "contains a newline or other control character"
    if any(char in source for char in "\\?[]{}~"):
        return "may use only '*' and '**' as wildcards, and no backslash, '?', brackets, braces or '~'"
    if source != "/" and (source.endswith("/") or "//" in source):
        return "has an empty component; write /state/work/** for a directory and everything in it"
    names = source[1:].split("/")
    if any(name in (".", "..") for name in names):
        return "contains '.' or '..'; write the path out"
    if any("**" in name and name != ANY for name in names):
        return "uses '**' inside a component; '**' must be a whole component, as in /state/**"
    return None
