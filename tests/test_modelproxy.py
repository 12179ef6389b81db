"""The daemon's model and egress proxy, over real sockets on loopback: the credential, streaming,
big and chunked bodies, keep-alive, many agents at once, a hung upstream, CONNECT and plain
HTTP under the allow-list, TLS to the upstream; and the in-sandbox forwarder in front of it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio

from hyperhive_core import forward
from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.configrepo import render_agent_toml
from hyperhive_core.egress import InvalidTarget, egress_problems, parse_target
from hyperhive_core.errors import ConfigError
from hyperhive_core.modelproxy import ModelProxy, Upstream, credential_headers, sandbox_env, tls_context

SECRET = "sk-ant-test-daemon-secret"
MIB = 1024 * 1024


# -- an upstream to proxy to ------------------------------------------------------------------------


@dataclass
class Seen:
    """A request as the upstream received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    size: int
    sha256: str

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


Handler = Callable[[Seen, "Reply"], Awaitable[None]]


class Reply:
    """The upstream's side of one response."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream, self.conn = stream, conn

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.conn.send(event) or b"")

    async def json(self, payload: object, status: int = 200, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        await self.send(
            h11.Response(status_code=status, headers=headers + ([("connection", "close")] if close else []))
        )
        await self.send(h11.Data(data=data))
        await self.send(h11.EndOfMessage())


async def echo(seen: Seen, reply: Reply) -> None:
    await reply.json({"method": seen.method, "target": seen.target, "size": seen.size, "sha256": seen.sha256})


@dataclass
class Origin:
    """A test HTTP server on 127.0.0.1 that records what reaches it."""

    handler: Handler = echo
    tls: ssl.SSLContext | None = None
    port: int = 0
    accepted: int = 0
    seen: list[Seen] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    """Set when a connection ends from the client's side while a handler runs."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.tls is not None:
            listeners = [trio.SSLListener(listener, self.tls, https_compatible=True) for listener in listeners]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        self.accepted += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    request = await _next(stream, conn)
                    if not isinstance(request, h11.Request):
                        return
                    digest, size = hashlib.sha256(), 0
                    while isinstance(event := await _next(stream, conn), h11.Data):
                        digest.update(event.data)
                        size += len(event.data)
                    headers = [(name.decode(), value.decode()) for name, value in request.headers]
                    seen = Seen(request.method.decode(), request.target.decode(), headers, size, digest.hexdigest())
                    self.seen.append(seen)
                    await self.handler(seen, Reply(stream, conn))
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _next(stream: trio.abc.Stream, conn: h11.Connection) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event


# -- a client, as the CLI or curl would be --------------------------------------------------------------


class Client:
    """One HTTP/1.1 connection to the proxy (its unix socket, or the forwarder's port)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.conn.send(event) or b"")

    async def head(self, method: str, target: str, headers: list[tuple[str, str]] = ()) -> None:
        host = [] if any(name == "host" for name, _ in headers) else [("host", "127.0.0.1")]
        await self.send(h11.Request(method=method, target=target, headers=[*host, *headers]))

    async def event(self) -> object:
        return await _next(self.stream, self.conn)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The whole next response: status, headers, body."""
        while isinstance(response := await self.event(), h11.InformationalResponse):
            pass
        assert isinstance(response, h11.Response), response
        body = bytearray()
        while isinstance(event := await self.event(), h11.Data):
            body += event.data
        assert isinstance(event, h11.EndOfMessage), event
        headers = {name.decode(): value.decode() for name, value in response.headers}
        return response.status_code, headers, bytes(body)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> None:
        await self.head(method, target, [*headers, ("content-length", str(len(body)))] if body else list(headers))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def call(
        self, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        await self.request(method, target, headers, body)
        return await self.response()

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


@dataclass
class Rig:
    """A running proxy, its agents' sockets, and what it reported."""

    proxy: ModelProxy
    root: Path
    origin: Origin
    egress: dict[str, list[str]] = field(default_factory=dict)
    denials: list[tuple[str, str, int]] = field(default_factory=list)
    streams: list[trio.abc.Stream] = field(default_factory=list)

    async def agent(self, name: str) -> Path:
        path = self.root / "run" / name / "model.sock"
        await self.proxy.open(name, path)
        return path

    async def client(self, name: str) -> Client:
        """A connection to ``name``'s socket, closed with the test."""
        self.streams.append(await trio.open_unix_socket(str(self.root / "run" / name / "model.sock")))
        return Client(self.streams[-1])


@pytest.fixture
async def origin(nursery) -> Origin:
    server = Origin()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def rig(nursery, tmp_path, origin) -> AsyncIterator[Rig]:
    def upstream(agent: str) -> Upstream:
        return Upstream.from_url(f"http://127.0.0.1:{origin.port}/agents/{agent}", [(b"x-api-key", SECRET.encode())])

    egress: dict[str, list[str]] = {}
    denials: list[tuple[str, str, int]] = []
    proxy = ModelProxy(
        upstream, lambda agent: egress.get(agent, []), lambda *denial: denials.append(denial), ssl_context=tls_context()
    )
    await nursery.start(proxy.serve)
    rig = Rig(proxy, tmp_path, origin, egress, denials)
    yield rig
    for stream in rig.streams:
        await stream.aclose()


# -- the model API ----------------------------------------------------------------------------------------


async def test_the_daemon_adds_its_credential_and_drops_the_sandboxs(rig):
    await rig.agent("alice")
    client = await rig.client("alice")
    headers = [
        ("x-api-key", "hyperhive-proxy-adds-the-key"),
        ("authorization", "Bearer stolen"),
        ("proxy-authorization", "Basic x"),
        ("anthropic-version", "2023-06-01"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "dropped: the Connection header names it"),
    ]
    with trio.fail_after(10):
        status, _, body = await client.call("POST", "/v1/messages?beta=true", headers, b'{"model": "haiku"}')
    assert status == 200
    assert json.loads(body)["target"] == "/agents/alice/v1/messages?beta=true"
    (seen,) = rig.origin.seen
    assert seen.header("x-api-key") == [SECRET]
    assert seen.header("authorization") == seen.header("proxy-authorization") == seen.header("x-hop") == []
    assert seen.header("anthropic-version") == ["2023-06-01"]
    assert seen.header("host") == [f"127.0.0.1:{rig.origin.port}"]
    assert rig.denials == []


def test_the_credential_comes_from_the_daemons_environment():
    assert credential_headers({"ANTHROPIC_API_KEY": "k", "ANTHROPIC_AUTH_TOKEN": "t"}) == [
        (b"x-api-key", b"k"),
        (b"authorization", b"Bearer t"),
    ]
    assert credential_headers({"ANTHROPIC_API_KEY": ""}) == []
    env = sandbox_env()
    assert env["ANTHROPIC_BASE_URL"] == env["HTTPS_PROXY"] == env["http_proxy"] == f"http://127.0.0.1:{forward.PORT}"
    assert env["ANTHROPIC_API_KEY"] == "hyperhive-proxy-adds-the-key"
    assert "127.0.0.1" in env["NO_PROXY"].split(",")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("api.anthropic.com", "is not an http:// or https:// URL"),
        ("ftp://api.anthropic.com", "is not an http:// or https:// URL"),
        ("https://api.anthropic.com:99999", "is not a URL"),
        ("https://api.anthropic.com/?x=1", "and no query"),
    ],
)
def test_a_bad_endpoint_is_a_config_error(url, message):
    with pytest.raises(ConfigError, match=rf"\[claude\] base_url = .*{message}"):
        Upstream.from_url(url, where="[claude] base_url")
    upstream = Upstream.from_url("https://api.anthropic.com/")
    assert (upstream.origin.authority, upstream.prefix) == ("api.anthropic.com", "")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@asynccontextmanager
async def forwarder(socket_path: Path, command: list[str] = ("sleep", "60")) -> AsyncIterator[tuple[int, trio.Process]]:
    """``forward.py`` on this host (its own loopback is the host's here), in front of ``socket_path``."""
    port = free_port()
    process = await trio.lowlevel.open_process(forward.command(str(socket_path), list(command), port=port))
    try:
        with trio.fail_after(10):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.02)
        yield port, process
    finally:
        process.kill()
        await process.wait()


@asynccontextmanager
async def connection(rig: Rig, agent: str, via: str) -> AsyncIterator[Client]:
    """A client of ``agent``'s proxy, on its socket or through the forwarder."""
    if via == "socket":
        yield await rig.client(agent)
        return
    async with forwarder(rig.root / "run" / agent / "model.sock") as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield Client(stream)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("via", ["socket", "forwarder"])
async def test_a_streamed_reply_reaches_the_client_as_it_is_sent(rig, origin, via):
    """Each server-sent event is held back until the client has the one before: a proxy (or
    forwarder) that buffered the response would never let the next one go."""
    received = [trio.Event() for _ in range(3)]

    async def stream_events(seen: Seen, reply: Reply) -> None:
        await reply.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")]))
        for index, event in enumerate(received):
            await reply.send(h11.Data(data=f"event: ping\ndata: {index}\n\n".encode()))
            await event.wait()
        await reply.send(h11.EndOfMessage())

    origin.handler = stream_events
    await rig.agent("alice")
    async with connection(rig, "alice", via) as client:
        with trio.fail_after(10):
            await client.request("POST", "/v1/messages", body=b'{"stream": true}')
            response = await client.event()
            assert isinstance(response, h11.Response)
            assert response.status_code == 200
            for index, event in enumerate(received):
                data = b""
                while b"\n\n" not in data:  # one event may come in pieces
                    chunk = await client.event()
                    assert isinstance(chunk, h11.Data), chunk
                    data += chunk.data
                assert data == f"event: ping\ndata: {index}\n\n".encode()
                event.set()
            assert isinstance(await client.event(), h11.EndOfMessage)


async def test_big_bodies_stream_both_ways_in_bounded_memory(rig, origin):
    """96 MiB up (chunked, no length) and 96 MiB down pass through with the proxy's memory
    flat: it holds a piece at a time, never a body."""
    piece, pieces = os.urandom(MIB), 96

    async def big_reply(seen: Seen, reply: Reply) -> None:
        await reply.send(h11.Response(status_code=200, headers=[("content-length", str(pieces * MIB))]))
        for _ in range(pieces):
            await reply.send(h11.Data(data=piece))
        await reply.send(h11.EndOfMessage())

    origin.handler = big_reply
    expected = hashlib.sha256()
    for _ in range(pieces):
        expected.update(piece)
    await rig.agent("alice")
    client = await rig.client("alice")
    baseline, peak = rss_kib(), [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_kib())
            await trio.sleep(0.005)

    received, size = hashlib.sha256(), 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        with trio.fail_after(120):
            await client.head("POST", "/v1/messages", [("transfer-encoding", "chunked")])
            for _ in range(pieces):
                await client.send(h11.Data(data=piece))
            await client.send(h11.EndOfMessage())
            response = await client.event()
            assert isinstance(response, h11.Response)
            assert response.status_code == 200
            while isinstance(event := await client.event(), h11.Data):
                received.update(event.data)
                size += len(event.data)
        nursery.cancel_scope.cancel()
    (seen,) = origin.seen
    assert (seen.size, seen.sha256, seen.header("transfer-encoding")) == (
        pieces * MIB,
        expected.hexdigest(),
        ["chunked"],
    )
    assert (size, received.hexdigest()) == (pieces * MIB, expected.hexdigest())
    assert (peak[0] - baseline) * 1024 < 40 * MIB, f"memory grew by {(peak[0] - baseline) // 1024} MiB"


async def test_a_connection_keeps_its_upstream_connection_while_it_lasts(rig, origin):
    await rig.agent("alice")
    client = await rig.client("alice")
    with trio.fail_after(10):
        for _ in range(3):
            assert (await client.call("POST", "/v1/messages", body=b"{}"))[0] == 200
            client.next_cycle()
        assert (origin.accepted, len(origin.seen)) == (1, 3)

        # The upstream closes after an answer, saying so, or not (its idle timeout): the
        # next request goes on a new connection, and the client's stays as it was.
        async def answer_then_close(seen: Seen, reply: Reply) -> None:
            await reply.json({}, close=seen.target.endswith("say-so"))
            if not seen.target.endswith("say-so"):
                await reply.stream.aclose()
                closed.set()

        origin.handler = answer_then_close
        closed = trio.Event()
        assert (await client.call("POST", "/v1/messages?silently", body=b"{}"))[0] == 200
        client.next_cycle()
        await closed.wait()
        assert (await client.call("POST", "/v1/messages?say-so", body=b"{}"))[0] == 200
        client.next_cycle()
        origin.handler = echo
        assert (await client.call("POST", "/v1/messages", body=b"{}"))[0] == 200
    assert (origin.accepted, len(origin.seen)) == (3, 6)


async def test_many_agents_and_connections_at_once(rig, origin):
    """Every request is held until all have arrived: they only can if the proxy serves them together."""
    agents, each = 16, 4
    everyone = trio.Event()

    async def all_together(seen: Seen, reply: Reply) -> None:
        if len(origin.seen) == agents * each:
            everyone.set()
        await everyone.wait()
        await reply.json({"target": seen.target})

    origin.handler = all_together
    for number in range(agents):
        await rig.agent(f"a{number}")
    answers = []

    async def ask(agent: str) -> None:
        client = await rig.client(agent)
        status, _, body = await client.call("POST", "/v1/messages", body=b"{}")
        answers.append((status, agent, json.loads(body)["target"]))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for number in range(agents):
                for _ in range(each):
                    nursery.start_soon(ask, f"a{number}")
    assert len(answers) == agents * each
    assert all((status, target) == (200, f"/agents/{agent}/v1/messages") for status, agent, target in answers)


async def test_a_hung_upstream_is_let_go_once_the_client_gives_up(rig, origin):
    let_go = trio.Event()

    async def hang_for_one(seen: Seen, reply: Reply) -> None:
        if not seen.target.startswith("/agents/hung/"):
            await echo(seen, reply)
            return
        while await reply.stream.receive_some(65536):  # never answers; returns once the proxy closes
            pass
        let_go.set()

    origin.handler = hang_for_one
    await rig.agent("hung")
    await rig.agent("other")
    hung = await rig.client("hung")
    with trio.fail_after(10):
        await hung.request("POST", "/v1/messages", body=b"{}")
        while not any(seen.target.startswith("/agents/hung/") for seen in origin.seen):
            await trio.sleep(0.01)
        other = await rig.client("other")
        assert (await other.call("POST", "/v1/messages", body=b"{}"))[0] == 200  # the daemon is not wedged
        await hung.stream.aclose()  # as the CLI does when the harness interrupts a stalled turn
        await let_go.wait()


async def test_an_unreachable_upstream_is_an_api_error_the_cli_retries(nursery, tmp_path):
    port = free_port()  # nothing listens there
    proxy = ModelProxy(lambda agent: Upstream.from_url(f"http://127.0.0.1:{port}"), lambda agent: [])
    await nursery.start(proxy.serve)
    await proxy.open("alice", tmp_path / "model.sock")
    client = Client(await trio.open_unix_socket(str(tmp_path / "model.sock")))
    async with client.stream:
        with trio.fail_after(10):
            for _ in range(2):  # and the connection stays usable
                status, headers, body = await client.call("POST", "/v1/messages", body=b"{}")
                client.next_cycle()
                assert (status, headers["content-type"]) == (502, "application/json")
                error = json.loads(body)
                assert (error["type"], error["error"]["type"]) == ("error", "api_error")
                assert error["error"]["message"].startswith(
                    f"hyperhive model proxy: cannot reach http://127.0.0.1:{port}: "
                )
    await proxy.close("alice")
    assert not (tmp_path / "model.sock").exists()


async def test_the_forwarders_own_address_still_means_the_model_api(rig):
    """A client that proxies even the base URL (no NO_PROXY) sends it in absolute form."""
    await rig.agent("alice")
    client = await rig.client("alice")
    with trio.fail_after(10):
        status, _, body = await client.call(
            "POST", f"http://127.0.0.1:{forward.PORT}/v1/messages?beta=true", body=b"{}"
        )
    assert (status, json.loads(body)["target"]) == (200, "/agents/alice/v1/messages?beta=true")
    assert rig.origin.seen[0].header("x-api-key") == [SECRET]


# -- egress ------------------------------------------------------------------------------------------------


async def open_tunnel(client: Client, target: str) -> h11.Response:
    await client.head("CONNECT", target, [("host", target)])
    await client.send(h11.EndOfMessage())
    response = await client.event()
    assert isinstance(response, h11.Response)
    return response


async def test_connect_tunnels_to_listed_targets_only(rig, origin, caplog):
    rig.egress["alice"] = [f"127.0.0.1:{origin.port}"]
    await rig.agent("alice")
    client = await rig.client("alice")
    with trio.fail_after(10):
        assert (await open_tunnel(client, f"127.0.0.1:{origin.port}")).status_code == 200
        inner = Client(client.stream)  # the tunnel: HTTP to the target itself, end to end
        status, _, body = await inner.call("GET", "/through", [("x-api-key", "mine")])
    assert (status, json.loads(body)["target"]) == (200, "/through")
    assert origin.seen[-1].header("x-api-key") == ["mine"]  # a tunnel's bytes are the agent's own

    with caplog.at_level("WARNING", logger="hyperhive_core.modelproxy"), trio.fail_after(10):
        for _ in range(2):
            refused = await rig.client("alice")
            assert (await open_tunnel(refused, "127.0.0.1:9")).status_code == 403
            body = b""
            while isinstance(event := await refused.event(), h11.Data):
                body += event.data
            assert b'adding "127.0.0.1:9" to [agents.alice] egress' in body
    assert rig.denials == [("alice", "127.0.0.1:9", 1)]  # the second within 10 s is counted, not reported
    [denied] = rig.proxy.denied("alice")
    assert (denied["target"], denied["count"]) == ("127.0.0.1:9", 2)
    assert "agent 'alice': egress to 127.0.0.1:9 denied (1 so far)" in caplog.text


async def test_a_tunnel_passes_half_closes_both_ways(rig, nursery):
    async def count_then_answer(stream: trio.SocketStream) -> None:
        size = 0
        while data := await stream.receive_some(65536):
            size += len(data)
        await stream.send_all(f"{size} bytes".encode())
        await stream.aclose()

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, count_then_answer, [listener])
    rig.egress["alice"] = [f"localhost:{port}"]
    await rig.agent("alice")
    client = await rig.client("alice")
    with trio.fail_after(10):
        assert (await open_tunnel(client, f"localhost:{port}")).status_code == 200
        await client.stream.send_all(b"x" * 300_000)
        await client.stream.send_eof()
        answer = b""
        while data := await client.stream.receive_some(65536):
            answer += data
    assert answer == b"300000 bytes"


async def test_plain_http_goes_through_under_the_same_list(rig, origin):
    rig.egress["alice"] = [f"127.0.0.1:{origin.port}"]
    await rig.agent("alice")
    client = await rig.client("alice")
    url = f"http://127.0.0.1:{origin.port}"
    with trio.fail_after(10):
        status, _, body = await client.call("GET", f"{url}/plain?x=1", [("proxy-authorization", "Basic x")])
        client.next_cycle()
        assert (status, json.loads(body)["target"]) == (200, "/plain?x=1")
        assert origin.seen[-1].header("proxy-authorization") == []
        status, _, body = await client.call("GET", "http://127.0.0.1:9/")
        client.next_cycle()
        assert (status, body) == (
            403,
            b"hyperhive proxy: alice may not connect to 127.0.0.1:9. The operator allows it "
            b'by adding "127.0.0.1:9" to [agents.alice] egress (or egress in its agent.toml).\n',
        )
        status, _, body = await client.call("GET", f"https://127.0.0.1:{origin.port}/")
        assert (status, body) == (
            400,
            b"hyperhive proxy: cannot proxy 'https://127.0.0.1:%d/'; https goes through CONNECT\n" % origin.port,
        )
    assert [denial[1] for denial in rig.denials] == ["127.0.0.1:9"]


async def test_a_request_that_is_not_http_gets_a_400(rig):
    await rig.agent("alice")
    stream = await trio.open_unix_socket(str(rig.root / "run" / "alice" / "model.sock"))
    async with stream:
        with trio.fail_after(10):
            await stream.send_all(b"HELLO THERE\r\n\r\n")
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"hyperhive proxy: not a valid HTTP/1.1 request" in answer


def test_egress_entries_are_one_host_and_one_port_each(make_pm):
    assert parse_target("GitHub.com:443") == ("github.com", 443)
    assert parse_target("[::1]:8080") == ("::1", 8080)
    assert str(parse_target("[::1]:8080")) == "[::1]:8080"
    assert egress_problems(["github.com:443", "127.0.0.1:8080", "[::1]:8080", "localhost:3000"]) == []
    assert egress_problems(["github.com", "*.npmjs.org:443", "github.com:70000", "https://x.org:443", "::1:80"]) == [
        "egress: 'github.com' needs a port, like 'github.com:443'",
        "egress: '*.npmjs.org:443': wildcards are not supported; list each host:port the agent needs",
        "egress: 'github.com:70000': the port must be a number from 1 to 65535, not '70000'",
        "egress: 'https://x.org:443' is not a host:port: give no scheme, user or path, like 'github.com:443'",
        "egress: '::1:80': write an IPv6 address in brackets, like '[::1]:80'",
    ]
    assert egress_problems(["a.org:1", "A.org:1"]) == ["egress: 'A.org:1' is listed twice"]
    with pytest.raises(InvalidTarget, match="names no host"):
        parse_target(":443")
    where = "hyperhive.toml [agents.alice]"
    with pytest.raises(ConfigError, match=r"agent 'alice' has an invalid config: egress: 'github.com' needs a port"):
        check_agent_config(make_pm(), "alice", AgentConfig(egress=["github.com"]), where)
    assert check_agent_config(make_pm(), "alice", AgentConfig(egress=["github.com:443"]), where).egress == [
        "github.com:443"
    ]
    # In an agent's own agent.toml too, where the manager proposes it and the operator approves.
    text = render_agent_toml(AgentConfig(egress=["github.com:443"]), [])
    assert "# egress: What it may connect to besides the model API" in text
    assert tomllib.loads(text)["egress"] == ["github.com:443"]
    assert "egress" not in tomllib.loads(render_agent_toml(AgentConfig(), []))


# -- TLS to the upstream -----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_to_the_upstream_trusts_the_system_and_node_extra_ca_certs(nursery, tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    tls_origin = Origin(tls=server_tls)
    await nursery.start(tls_origin.serve)
    upstream = Upstream.from_url(f"https://localhost:{tls_origin.port}/base", [(b"x-api-key", SECRET.encode())])
    monkeypatch.delenv("NODE_EXTRA_CA_CERTS", raising=False)
    proxies = {"system": ModelProxy(lambda agent: upstream, lambda agent: [])}
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(cert))
    proxies["extra"] = ModelProxy(lambda agent: upstream, lambda agent: [])
    answers = {}
    for name, proxy in proxies.items():
        await nursery.start(proxy.serve)
        await proxy.open("alice", tmp_path / name / "model.sock")
        client = Client(await trio.open_unix_socket(str(tmp_path / name / "model.sock")))
        async with client.stream:
            with trio.fail_after(10):
                answers[name] = await client.call("POST", "/v1/messages", body=b"{}")
    assert answers["extra"][0] == 200
    assert json.loads(answers["extra"][2])["target"] == "/base/v1/messages"
    assert tls_origin.seen[0].header("x-api-key") == [SECRET]
    assert answers["system"][0] == 502
    assert "certificate verify failed" in json.loads(answers["system"][2])["error"]["message"]
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"NODE_EXTRA_CA_CERTS = .*missing.pem: cannot load its certificates"):
        tls_context()


# -- the forwarder ---------------------------------------------------------------------------------------------


def run_forward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", forward.__file__, *args], capture_output=True, text=True)


def test_the_forwarder_says_what_is_wrong(tmp_path):
    usage = run_forward(str(tmp_path / "model.sock"), "8411", "sleep")
    assert (usage.returncode, usage.stderr) == (2, "usage: forward.py SOCKET PORT -- COMMAND [ARG...]\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run_forward(str(tmp_path / "model.sock"), port, "--", "true")
    assert (busy.returncode, busy.stderr) == (
        1,
        f"hyperhive forward: cannot listen on 127.0.0.1:{port}: Address already in use\n",
    )
    missing = run_forward(str(tmp_path / "model.sock"), str(free_port()), "--", "/nonexistent/claude")
    assert (missing.returncode, missing.stderr) == (
        127,
        "hyperhive forward: cannot run /nonexistent/claude: No such file or directory\n",
    )
    assert run_forward(str(tmp_path / "model.sock"), str(free_port()), "--", "sh", "-c", "exit 7").returncode == 7


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def test_the_forwarder_runs_its_command_in_its_own_place_and_ends_with_it(rig):
    await rig.agent("alice")
    async with forwarder(rig.root / "run" / "alice" / "model.sock", ["sleep", "60"]) as (port, process):
        # The command has the forwarder's pid: the backend's process is the command itself.
        with trio.fail_after(10):
            while Path(f"/proc/{process.pid}/cmdline").read_bytes() != b"sleep\x0060\x00":
                await trio.sleep(0.01)  # the port accepts from the fork on; the exec follows
        (child,) = map(int, Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split())
        assert forward.__file__.encode() in Path(f"/proc/{child}/cmdline").read_bytes()
        # It lets go of the command's stdio (whose end the backend waits for) and its session.
        with trio.fail_after(10):
            while any(os.readlink(f"/proc/{child}/fd/{fd}") != os.devnull for fd in ("0", "1", "2")):
                await trio.sleep(0.01)
        assert os.getsid(child) == child
        client = Client(await trio.open_tcp_stream("127.0.0.1", port))
        async with client.stream:
            with trio.fail_after(10):
                assert (await client.call("POST", "/v1/messages", body=b"{}"))[0] == 200
    with trio.fail_after(10):
        while alive(child):
            await trio.sleep(0.05)
