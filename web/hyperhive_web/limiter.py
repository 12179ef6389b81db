"""Wrong operator tokens, limited: per client, and for all clients together.

Each client has a token bucket of attempts at the operator token: ``per_minute``
of them at once, refilled evenly over a minute. A wrong token spends one; a right
one gives it back. With the bucket empty, the client's next attempts get a 429
with ``Retry-After`` (the seconds until one attempt is back) and are not checked at
all, so a guesser learns nothing more by trying harder.

All clients together have a bucket six times as big, the ceiling for many
addresses guessing at once. It only holds back clients that have failed lately
themselves: a client whose own bucket is full (one with no wrong token in the
last minute, such as the operator's browser) is never refused because of other
clients' failures. Only when more clients are failing than the limiter remembers
(``clients_max``) does the ceiling hold everyone back, each for the seconds until
the next attempt is free.

Who is "a client": the remote address, an IPv6 one by its /64 (one machine usually
has the whole network). Every local connection comes from a loopback address, so
a loopback client is told apart by the uid owning its end of the connection
(Linux's sock_diag, else ``/proc/net/tcp``): another local user's processes have
their uid, the operator's browser or ``hyperhive attach`` the operator's.
Loopback clients whose uid cannot be found share one bucket.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperhive_web.auth import Refused

# All clients together may fail this many times as often as one.
GLOBAL_FACTOR = 6
CLIENTS_MAX = 4096
PROC_NET = Path("/proc/net")
ESTABLISHED, CLOSE_WAIT = "01", "08"  # TCP states as /proc/net/tcp prints them
# Netlink's sock_diag (linux/sock_diag.h, linux/inet_diag.h).
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HEADER = 4, 20, 1, 2, 16
ALL_STATES, NO_COOKIE = 0xFFFFFFFF, (0xFFFFFFFF, 0xFFFFFFFF)
# Where struct inet_diag_msg has the uid: after family, state, timer, retrans (4 bytes), the
# inet_diag_sockid (48) and expires, rqueue, wqueue (12).
DIAG_MSG_UID = 4 + 48 + 12


@dataclass
class _Bucket:
    """Up to ``limit`` attempts, ``rate`` of them coming back each second."""

    limit: float
    rate: float
    tokens: float
    at: float

    def level(self, now: float) -> float:
        return min(self.limit, self.tokens + (now - self.at) * self.rate)

    def add(self, attempts: float, now: float) -> None:
        self.tokens, self.at = max(0.0, min(self.limit, self.level(now) + attempts)), now

    def wait(self, now: float) -> float:
        """Seconds until one attempt is back."""
        return (1 - self.level(now)) / self.rate


class FailureLimiter:
    """Token buckets of attempts at the operator token, by client (see the module's docs)."""

    def __init__(
        self, per_minute: int, *, clients_max: int = CLIENTS_MAX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = float(per_minute)
        self.rate = per_minute / 60
        self.clients_max = clients_max
        self._clock = clock
        everyone = self.burst * GLOBAL_FACTOR
        self._everyone = _Bucket(everyone, self.rate * GLOBAL_FACTOR, everyone, clock())
        # Oldest attempt first, so the front is the first to refill and to be forgotten.
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many clients it remembers."""
        return len(self._clients)

    def acquire(self, client: str) -> None:
        """Spend one of ``client``'s attempts; raise a 429 :class:`Refused` if it has none."""
        now = self._clock()
        self._forget_refilled(now)
        bucket = self._clients.get(client)
        tokens = bucket.level(now) if bucket else self.burst
        if bucket and tokens < 1:
            raise TooManyAttempts(f"too many wrong tokens from {client}", bucket.wait(now), "check the operator token")
        crowded = bucket is None and len(self._clients) >= self.clients_max
        # The ceiling holds back a client that failed lately, or anyone once too many clients fail.
        if self._everyone.level(now) < 1 and (tokens < self.burst or crowded):
            what, hint = "too many wrong tokens from many clients", "a browser already logged in still works"
            raise TooManyAttempts(what, self._everyone.wait(now), hint)
        if bucket is None:
            if crowded:
                self._clients.popitem(last=False)
            bucket = self._clients[client] = _Bucket(self.burst, self.rate, self.burst, now)
        self._clients.move_to_end(client)
        bucket.add(-1, now)
        self._everyone.add(-1, now)

    def release(self, client: str) -> None:
        """``client``'s attempt was right: it costs nothing."""
        now = self._clock()
        if client in self._clients:
            self._clients[client].add(1, now)
        self._everyone.add(1, now)

    def remaining(self, client: str) -> int:
        """Attempts ``client`` has left now."""
        bucket = self._clients.get(client)
        return int(bucket.level(self._clock())) if bucket else int(self.burst)

    def _forget_refilled(self, now: float) -> None:
        """Drop the clients whose bucket is full again: remembering them changes nothing."""
        while self._clients and next(iter(self._clients.values())).level(now) >= self.burst:
            self._clients.popitem(last=False)


class TooManyAttempts(Refused):
    """A 429: no attempts left; ``retry_after`` says for how many seconds."""

    def __init__(self, what: str, wait: float, hint: str) -> None:
        seconds = max(1, math.ceil(wait))
        super().__init__(429, f"{what}; try again in {seconds} s ({hint})", retry_after=seconds)


def client_key(client: tuple[str, int] | None, server: tuple[str, int] | None) -> str:
    """Who a connection is, as the limiter counts clients (see the module's docs).

    May read ``/proc/net/tcp`` for a loopback client: call it off the event loop.
    """
    if not client:
        return "unknown"
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return client[0]  # a unix socket's path
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        uid = loopback_peer_uid(client, server) if server else None
        return "loopback" if uid is None else f"loopback uid {uid}"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def loopback_peer_uid(client: tuple[str, int], server: tuple[str, int], proc_net: Path = PROC_NET) -> int | None:
    """The uid owning the client's end of a TCP connection on this host, or ``None``.

    Asks the kernel for that one socket (sock_diag, microseconds); where that is not
    available, finds it in ``/proc/net/tcp``, which lists every socket on the host.
    """
    try:
        return diag_peer_uid(client, server)
    except OSError:
        return proc_peer_uid(client, server, proc_net)


def diag_peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int:
    """The uid sock_diag reports for the socket bound to ``client`` and connected to ``server``.

    :raises OSError: no such socket, or no sock_diag for TCP in this kernel (the same ``ENOENT``).
    """
    local, remote = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    family = socket.AF_INET if local.version == 4 else socket.AF_INET6
    # struct inet_diag_req_v2: family, protocol, ext, pad, states, then the inet_diag_sockid of one
    # socket: its ports and addresses (network order), any interface, no cookie.
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
    request += struct.pack(
        "!HH16s16s", client[1], server[1], local.packed.ljust(16, b"\0"), remote.packed.ljust(16, b"\0")
    )
    request += struct.pack("=III", 0, *NO_COOKIE)
    header = struct.pack("=IHHII", NLMSG_HEADER + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
        netlink.settimeout(1.0)
        netlink.sendto(header + request, (0, 0))
        reply = netlink.recv(65536)
    _, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, NLMSG_HEADER)
        raise OSError(-error, os.strerror(-error))
    (uid,) = struct.unpack_from("=I", reply, NLMSG_HEADER + DIAG_MSG_UID)
    return uid


def proc_peer_uid(client: tuple[str, int], server: tuple[str, int], proc_net: Path = PROC_NET) -> int | None:
    """The same from ``/proc/net/tcp{,6}``, a list of every TCP socket on the host; ``None`` if it is not there."""
    local, remote = _proc_endpoint(*client), _proc_endpoint(*server)
    try:
        table = (proc_net / ("tcp" if len(local) == 13 else "tcp6")).read_text()
    except OSError:
        return None
    # Each line: "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...". The
    # connection is established, or half-closed by the client; a TIME_WAIT ghost of the same ports has uid 0.
    for state in ESTABLISHED, CLOSE_WAIT:
        found = table.find(f" {local} {remote} {state} ")
        if found >= 0:
            return int(table[found : table.find("\n", found)].split()[6])
    return None


def _proc_endpoint(host: str, port: int) -> str:
    """``host:port`` as ``/proc/net/tcp{,6}`` prints it: the address as native-endian 32-bit words, in hex."""
    packed = ipaddress.ip_address(host).packed
    words = "".join(f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"
