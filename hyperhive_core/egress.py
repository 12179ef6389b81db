"""An agent's egress allow-list: ``[agents.NAME] egress = ["host:port", ...]``.

A sandbox reaches nothing but the daemon's proxy (``modelproxy.py``); every other
connection goes through it as an HTTP ``CONNECT`` (or a plain-HTTP proxy request)
and is allowed only to a ``host:port`` on the agent's list. There are no
wildcards and no port ranges: each entry names one host and one port, so what an
agent may reach is exactly what the operator approved.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)
_MAX_HOST_NAME = 253


class InvalidTarget(ValueError):
    """Not a ``host:port`` an allow-list can hold; the message says what would be."""


class Target(NamedTuple):
    """One ``host:port``: the host in lower case, an IPv6 address without brackets."""

    host: str
    port: int

    @property
    def is_address(self) -> bool:
        """Whether the host is an IP address rather than a name to resolve."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``"github.com:443"``, ``"127.0.0.1:8080"`` or ``"[::1]:8080"`` as a ``Target``.

    :raises InvalidTarget: anything else, with what to write instead.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidTarget(f"{text!r} is not a host:port, like 'github.com:443'")
    if "*" in text:
        raise InvalidTarget(f"{text!r}: wildcards are not supported; list each host:port the agent needs")
    if "/" in text or "@" in text:
        raise InvalidTarget(f"{text!r} is not a host:port: give no scheme, user or path, like 'github.com:443'")
    host, colon, port = text.rpartition(":")
    if not colon:
        raise InvalidTarget(f"{text!r} needs a port, like '{text}:443'")
    if not host:
        raise InvalidTarget(f"{text!r} names no host, like 'github.com:443'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise InvalidTarget(f"{text!r}: only an IPv6 address goes in brackets")
    elif ":" in host:
        raise InvalidTarget(f"{text!r}: write an IPv6 address in brackets, like '[{host}]:{port}'")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidTarget(f"{text!r}: the port must be a number from 1 to 65535, not {port!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host) or len(host) > _MAX_HOST_NAME or host.replace(".", "").isdigit():
            raise InvalidTarget(
                f"{text!r}: {host!r} is neither a host name (letters, digits, '-' and '.') nor an IP address"
            ) from None
        return Target(host.lower(), int(port))
    return Target(str(address), int(port))


def egress_problems(entries: Iterable[str]) -> list[str]:
    """What is wrong with an ``egress`` list, one sentence per bad entry."""
    problems = []
    seen: set[Target] = set()
    for entry in entries:
        try:
            target = parse_target(entry)
        except InvalidTarget as exc:
            problems.append(f"egress: {exc}")
            continue
        if target in seen:
            problems.append(f"egress: {entry!r} is listed twice")
        seen.add(target)
    return problems


def allowed(target: Target, entries: Iterable[str]) -> bool:
    """Whether ``target`` is on the list (whose entries have passed ``egress_problems``)."""
    return any(parse_target(entry) == target for entry in entries)
