"""Names in the hive: agents, and the reserved senders that are not agents."""

from __future__ import annotations

import re

from hyperhive_core.errors import HyperhiveError

AGENT_NAME_PATTERN = r"[a-z][a-z0-9\-]{0,30}"
"""What an agent name is, as a regular expression matched whole. The ``-`` is escaped so
that an HTML ``pattern`` attribute (JavaScript's ``v`` flag refuses a bare one) reads
it as Python does: the dashboard's spawn form checks the same rule."""
AGENT_NAME_RULE = "1-31 characters: lowercase letters, digits and '-', starting with a letter"
""":data:`AGENT_NAME_PATTERN` in words, for every message that refuses a name."""
AGENT_NAME = re.compile(rf"^{AGENT_NAME_PATTERN}$")
OPERATOR = "operator"
SYSTEM = "hive"
RESERVED = frozenset({OPERATOR, SYSTEM})


class InvalidName(HyperhiveError):
    """A name that could never be an agent's."""


def check_agent_name(name: object) -> str:
    """Return ``name`` if it matches the agent-name pattern, else raise ``InvalidName``.

    Checked before a name touches the disk, so ``..``, ``a/b`` or a NUL byte never
    become a path.
    """
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise InvalidName(f"invalid agent name {name!r}: use {AGENT_NAME_RULE}")
    if name in RESERVED:
        raise InvalidName(f"{name!r} is reserved for the hive itself; choose another agent name")
    return name
