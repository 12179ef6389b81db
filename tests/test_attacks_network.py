"""Attacks on the model and egress proxy: the daemon's key used for more than Claude Code's requests, and a
name on an agent's list that the attacker's DNS points at the host.

The name's owner answers with an address of their choosing. Besides the loopback
range, the unspecified address (``0.0.0.0``, ``::``) reaches the host's own
services on Linux, and so does loopback written as an IPv4-mapped IPv6 address.
The resolver below plays that DNS; the connections are real, to a real listener on
the host's loopback.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from test_modelproxy import SECRET, open_tunnel, origin, rig  # noqa: F401 (fixtures)

NAME = "builds.example.org"


class HostileDns:
    """Resolves ``NAME`` to ``address``; nothing else exists."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        if host not in (NAME, NAME.encode()):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sockaddr = (self.address, int(port), 0, 0) if family == socket.AF_INET6 else (self.address, int(port))
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    async def getnameinfo(self, sockaddr, flags):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def reaches(address: str, port: int) -> bool:
    """Whether a plain connection to ``address`` gets to the listener on 127.0.0.1."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.settimeout(5)
            probe.connect((address, port))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::ffff:0.0.0.0", "::"])
async def test_a_listed_name_never_leads_onto_the_hosts_own_services(rig, origin, address):  # noqa: F811
    if not reaches(address, origin.port):
        pytest.skip(f"{address} does not lead to this host's loopback here")
    await trio.testing.wait_all_tasks_blocked()  # the origin has seen the probe
    probed = origin.accepted
    trio.socket.set_custom_hostname_resolver(HostileDns(address))
    rig.egress["alice"] = [f"{NAME}:{origin.port}"]
    await rig.agent("alice")
    with trio.fail_after(30):
        response = await open_tunnel(await rig.client("alice"), f"{NAME}:{origin.port}")
    assert response.status_code == 502
    assert origin.accepted == probed


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/files"),  # every file uploaded with the daemon's key
        ("DELETE", "/v1/files/file_011"),
        ("POST", "/v1/messages/batches"),  # spends outside any agent's turn and its spend cap
        ("POST", "/v1/messages/../files"),
        ("POST", "/v1/messages/%2e%2e/files"),
        ("GET", "/v1/organizations/api_keys"),
        ("POST", "http://127.0.0.1:8411/v1/files"),
    ],
)
async def test_the_daemons_key_is_added_to_claude_codes_requests_only(rig, origin, method, target):  # noqa: F811
    await rig.agent("alice")
    client = await rig.client("alice")
    with trio.fail_after(30):
        status, _, body = await client.call(method, target, [("host", "127.0.0.1:8411")])
    assert status == 403
    assert "is not one of the model API requests the hive sends on" in body.decode()
    assert origin.seen == []  # nothing reached the endpoint, with the key or without
    with trio.fail_after(30):
        client = await rig.client("alice")
        status, _, _ = await client.call("POST", "/v1/messages?beta=true", body=b"{}")
    assert status == 200
    assert origin.seen[-1].header("x-api-key") == [SECRET]
