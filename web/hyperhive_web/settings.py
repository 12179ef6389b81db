"""The ``[web]`` config section: where the dashboard listens and who may reach it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hyperhive_core import ConfigError, option

# Host names a browser on this machine uses for a loopback address.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class WebSection:
    """The operator dashboard."""

    bind: str = option("127.0.0.1", help="Address the dashboard listens on. Agents can reach localhost too: see docs.")
    port: int = option(8700, help="TCP port of the dashboard; 0 picks a free one.")
    allowed_hosts: list[str] = option(
        [],
        help="Extra host names the dashboard answers to (the Host header), besides the loopback\n"
        "names and the bind address. Anything else is refused (DNS rebinding).",
    )
    session_days: int = option(30, help="How long a browser stays logged in.")
    token_failures_per_minute: int = option(
        10,
        help="Wrong operator tokens (at /login, or as a bearer token) one client may send at\n"
        "once; they come back evenly over a minute. Then it gets 429 until one is back.",
    )

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.bind)
        except ValueError:
            raise ConfigError(f"[web] bind must be an IP address such as 127.0.0.1, not {self.bind!r}") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"[web] port must be between 0 and 65535 (0 picks a free one), not {self.port}")
        if self.session_days < 1:
            raise ConfigError(f"[web] session_days must be at least 1, not {self.session_days}")
        if self.token_failures_per_minute < 1:
            raise ConfigError(
                f"[web] token_failures_per_minute must be at least 1, not {self.token_failures_per_minute}"
            )
        for host in self.allowed_hosts:
            if not host or (any(char in host for char in "/:@ ") and not _is_ipv6(host)):
                raise ConfigError(f"[web] allowed_hosts: {host!r} is not a host name; give names like 'hive.lan'")

    @property
    def hosts(self) -> frozenset[str]:
        """Every host name the dashboard answers to, lowercase, without port."""
        hosts = {*LOOPBACK_HOSTS, *(host.lower() for host in self.allowed_hosts)}
        if not ipaddress.ip_address(self.bind).is_unspecified:
            hosts.add(self.bind)
        return frozenset(hosts)

    @property
    def url_host(self) -> str:
        """The host to put in URLs for this machine's browser: the bind address, or loopback."""
        address = ipaddress.ip_address(self.bind)
        if address.is_unspecified:
            return "127.0.0.1" if address.version == 4 else "[::1]"
        return f"[{self.bind}]" if address.version == 6 else self.bind


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
