"""The daemon's end of every sandbox's network: the model API, and the egress allow-list.

A sandbox has a network namespace of its own with nothing but loopback, and one
way out: its agent's unix socket ``model.sock`` (``/run/hyperhive/model.sock``
inside), where this proxy serves HTTP/1.1. Inside, ``forward.py`` carries TCP from
``127.0.0.1:8411`` to it, and the session's environment points everything there
(:func:`sandbox_env`). The socket a connection arrives on says which agent it is.
Each request is one of three:

- **the model API** (``POST /v1/messages``, ``count_tokens``, ``GET /v1/models``, in origin form): sent on
  to the real endpoint (``[claude] base_url``, ``ANTHROPIC_BASE_URL`` or
  ``https://api.anthropic.com``; on the rehearsal model, the agent's own URL
  there) with the daemon's credential added, after any credential header the
  sandbox sent is dropped. The CLI inside holds only a stand-in key that opens nothing, so no key
  is ever in a sandbox, nor in any process's argv.
- **``CONNECT host:port``** (``HTTPS_PROXY``): a byte tunnel, if ``host:port`` is on
  the agent's ``egress`` list (``egress.py``).
- **a plain-HTTP proxy request** (``GET http://host:port/...``, ``HTTP_PROXY``):
  sent on, under the same list.

Everything else is refused, and each refused connection is logged and reported as
an ``egress_denied`` event. Bodies stream both ways in 64 KiB pieces, so memory
stays bounded whatever their size, and server-sent events reach the CLI as they
arrive. Only connecting has a timeout: how long a reply may take is the harness's
business (``[claude] stall_seconds``); a request whose client goes away is
abandoned at once.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import logging
import os
import re
import select
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import h11
import trio

from hyperhive_core.egress import InvalidTarget, Target, allowed, parse_target
from hyperhive_core.errors import ConfigError
from hyperhive_core.forward import PORT
from hyperhive_core.mcp_surface import _listen, start_listener, stop_listener

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

SOCKET_NAME = "model.sock"
"""The agent's proxy socket, beside its MCP socket in ``run/<name>/``."""
CONTAINER_MODEL_SOCKET = f"/run/hyperhive/{SOCKET_NAME}"
"""Where it is bound inside a sandbox."""
DEFAULT_ENDPOINT = "https://api.anthropic.com"
PLACEHOLDER_KEY = "hyperhive-proxy-adds-the-key"
"""The sandbox's ``ANTHROPIC_API_KEY``: the CLI will not start without one, and the proxy replaces it."""

MAX_CONNECTIONS = 64
"""Connections one agent may have open at once; more wait for one to end."""
CONNECT_TIMEOUT = 30.0
UPSTREAM_IDLE_SECONDS = 20.0
"""A kept-alive upstream connection idle longer than this is not reused: servers close idle ones."""
READ_SIZE = 64 * 1024
MAX_DISCARD = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
DENIED_KEPT = 20
"""Distinct denied targets remembered per agent for its page, the most recent."""
DENIED_REPORT_SECONDS = 10.0
"""A target denied again within this long is counted, not reported again."""
# What Claude Code asks of the model API. The daemon's key opens more there (files,
# batches, other endpoints of the account): no agent may use it for those.
MODEL_ROUTES = re.compile(r"POST /v1/messages(/count_tokens)?|GET /v1/models(/[\w.:@-]+)?|(GET|HEAD) /(api/hello)?")
# 0.0.0.0/8: as a destination, Linux takes 0.0.0.0 for the host itself.
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization"})
# RFC 9110 7.6.1, and Expect: the proxy answers 100-continue itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
OWN_ADDRESSES = frozenset({f"127.0.0.1:{PORT}", f"localhost:{PORT}"})
"""The forwarder's address inside: a client that proxies even that still means the model API."""

Headers = list[tuple[bytes, bytes]]


def sandbox_env() -> dict[str, str]:
    """A sandboxed process's network environment: the model API and the egress proxy, both
    at the forwarder; the stand-in key; and loopback kept direct."""
    url = f"http://127.0.0.1:{PORT}"
    direct = "127.0.0.1,localhost,::1"
    proxies = {name: url for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
    return {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
        **proxies,
        "NO_PROXY": direct,
        "no_proxy": direct,
    }


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """The ``Host`` header: the port only where it is not the scheme's own."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == {"http": 80, "https": 443}[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """Where an agent's model requests go, and the credential added to each."""

    origin: Origin
    prefix: str = ""
    """The URL's path, put before each request's (the rehearsal model's ``/agents/NAME``)."""
    credentials: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def from_url(cls, url: str, credentials: Sequence[tuple[bytes, bytes]] = (), *, where: str = "") -> Upstream:
        """``http(s)://host[:port][/path]`` as an upstream.

        :param where: the setting the URL came from, quoted in the error.
        :raises ConfigError: not such a URL.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{where or 'the model endpoint'} = {url!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"{where or 'the model endpoint'} = {url!r} is not an http:// or https:// URL with a host "
                "(and no query), like 'https://api.anthropic.com'"
            )
        origin = Origin(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
        return cls(origin, parts.path.rstrip("/"), tuple(credentials))


def credential_headers(environ: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The daemon's credential, as the CLI would send it: ``ANTHROPIC_API_KEY`` as
    ``x-api-key``, ``ANTHROPIC_AUTH_TOKEN`` as a bearer token."""
    headers = []
    if environ.get("ANTHROPIC_API_KEY"):
        headers.append((b"x-api-key", environ["ANTHROPIC_API_KEY"].encode()))
    if environ.get("ANTHROPIC_AUTH_TOKEN"):
        headers.append((b"authorization", b"Bearer " + environ["ANTHROPIC_AUTH_TOKEN"].encode()))
    return headers


def tls_context() -> ssl.SSLContext:
    """The system's CA store (``SSL_CERT_FILE`` too), plus ``NODE_EXTRA_CA_CERTS`` where the
    host reaches the API through a TLS-intercepting proxy, as it would tell the CLI."""
    context = ssl.create_default_context()
    extra = os.environ.get("NODE_EXTRA_CA_CERTS")
    if extra:
        try:
            context.load_verify_locations(cafile=extra)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"NODE_EXTRA_CA_CERTS = {extra}: cannot load its certificates: {exc}") from None
    return context


@dataclass
class _Denied:
    count: int = 0
    last_at: float = 0.0
    reported_at: float = -DENIED_REPORT_SECONDS


@dataclass
class _AgentProxy:
    path: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed: trio.Event = field(default_factory=trio.Event)
    slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(MAX_CONNECTIONS))
    denied: collections.OrderedDict[str, _Denied] = field(default_factory=collections.OrderedDict)


class ModelProxy:
    """Serves each agent's ``model.sock``. Start :meth:`serve` in a nursery, then :meth:`open`
    a socket per agent.

    :param upstream: the agent's model endpoint, asked on every request (the rehearsal
        model may start after the proxy).
    :param egress: the agent's allow-list, asked on every connection it makes out.
    :param on_denied: told of a denied connection (agent, target, times denied so far);
        at most once per target every ``DENIED_REPORT_SECONDS``.
    """

    def __init__(
        self,
        upstream: Callable[[str], Upstream],
        egress: Callable[[str], Sequence[str]],
        on_denied: Callable[[str, str, int], None] = lambda agent, target, count: None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.egress = egress
        self.on_denied = on_denied
        self.ssl_context = ssl_context or tls_context()
        self._agents: dict[str, _AgentProxy] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the agents' sockets until cancelled; every socket closes with it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._agents.clear()

    async def open(self, agent: str, path: str | os.PathLike[str]) -> None:
        """Listen for ``agent`` at ``path`` (0600, the daemon's; the backend hands it to the
        agent's uid); returns once connections are accepted."""
        if self._nursery is None:
            raise RuntimeError("ModelProxy.serve() must be running before a socket is opened")
        if agent in self._agents:
            raise RuntimeError(f"agent {agent!r} already has a model socket at {self._agents[agent].path}")
        proxy = _AgentProxy(Path(path))
        await start_listener(self._nursery, self._agents, agent, proxy, self._serve_agent, agent, proxy)

    async def close(self, agent: str) -> None:
        """Stop listening for ``agent``, end its connections and remove the socket file."""
        await stop_listener(self._agents, agent)

    def denied(self, agent: str) -> list[dict[str, Any]]:
        """The targets ``agent`` was refused since its socket opened (it last started), the
        most recent first, with how often."""
        proxy = self._agents.get(agent)
        entries = reversed(proxy.denied.items()) if proxy else ()
        return [{"target": target, "count": seen.count, "last_at": seen.last_at} for target, seen in entries]

    # -- connections -----------------------------------------------------------------------

    async def _serve_agent(self, agent: str, proxy: _AgentProxy, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with proxy.scope:
                async with _listen(proxy.path, None) as listener, trio.open_nursery() as connections:
                    log.info("agent %r: model and egress proxy listening at %s", agent, proxy.path)
                    task_status.started()
                    while True:
                        await proxy.slots.acquire()
                        try:
                            stream = await listener.accept()
                        except BaseException:
                            proxy.slots.release()
                            raise
                        connections.start_soon(self._connection, agent, proxy, stream)
        finally:
            proxy.closed.set()

    async def _connection(self, agent: str, proxy: _AgentProxy, stream: trio.SocketStream) -> None:
        client = _Client(stream)
        kept: _Server | None = None
        try:
            while (request := await client.next_request()) is not None:
                if request.method == b"CONNECT":
                    remote = await self._connect(agent, proxy, client, request)
                    if remote is not None:
                        await _tunnel(client, remote)
                        return
                else:
                    kept = await self._exchange(agent, proxy, client, request, kept)
                if not client.next_cycle():
                    return
        except h11.RemoteProtocolError as exc:
            log.info("agent %r: a request the proxy cannot read: %s", agent, exc)
            if client.can_respond:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                    await client.refuse(exc.error_status_hint, f"hyperhive proxy: not a valid HTTP/1.1 request: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("agent %r: a proxied connection ended: %r", agent, exc)
        except Exception:
            log.exception("agent %r: a proxied connection failed", agent)
        finally:
            proxy.slots.release()
            # Shielded: under cancellation, closing the first would raise before the second closed.
            with trio.CancelScope(shield=True):
                if kept is not None:
                    await kept.aclose()
                await trio.aclose_forcefully(stream)

    async def _exchange(
        self, agent: str, proxy: _AgentProxy, client: _Client, request: h11.Request, kept: _Server | None
    ) -> _Server | None:
        """Send one request on and its response back; return the upstream connection to keep."""
        target = request.target.decode("latin-1")
        headers = _end_to_end(request.headers)
        if target.startswith("/") or _authority(target) in OWN_ADDRESSES:
            upstream = self.upstream(agent)
            path = target if target.startswith("/") else _path_of(target)
            if not MODEL_ROUTES.fullmatch(f"{request.method.decode('latin-1')} {path.split('?', 1)[0]}"):
                await _refuse_route(agent, client, request.method.decode("latin-1"), path)
                return kept
            origin, target, egress, failure = upstream.origin, upstream.prefix + path, False, _api_error
            headers = [(name, value) for name, value in headers if name not in CREDENTIAL_HEADERS]
            headers += upstream.credentials
        elif target.startswith("http://"):
            try:
                wanted = _http_target(_authority(target))
            except InvalidTarget as exc:
                await client.refuse(400, f"hyperhive proxy: {exc}")
                return kept
            if not await self._allow(agent, proxy, client, wanted):
                return kept
            origin, target, egress, failure = Origin("http", *wanted), _path_of(target), True, _plain_error
        else:
            await client.refuse(400, f"hyperhive proxy: cannot proxy {target!r}; https goes through CONNECT")
            return kept
        headers = [(b"host", origin.authority.encode()), *[(n, v) for n, v in headers if n != b"host"]]
        if client.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        if kept is not None and (kept.origin != origin or not kept.reusable):
            await kept.aclose()
            kept = None
        try:
            server = kept or await self._open(origin, egress=egress)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, ssl.CertificateError) as exc:
            await failure(client, f"cannot reach {origin.scheme}://{origin.authority}: {_reason(exc)}")
            return None
        try:
            await _relay(client, server, h11.Request(method=request.method, target=target.encode(), headers=headers))
        except _UpstreamFailed as exc:
            await server.aclose()
            if not client.can_respond:
                raise trio.BrokenResourceError("the upstream broke off its response") from exc
            await failure(client, f"{origin.scheme}://{origin.authority} failed: {exc}")
            return None
        except BaseException:
            await server.aclose()
            raise
        if server.next_cycle():
            return server
        await server.aclose()
        return None

    async def _open(self, origin: Origin, *, egress: bool) -> _Server:
        """A connection to ``origin`` (TLS for https); an agent's ``egress`` one never reaches
        the host's loopback through a name."""
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await _open_tcp(Target(origin.host, origin.port), egress=egress)
            if origin.scheme == "https":
                tls = trio.SSLStream(stream, self.ssl_context, server_hostname=origin.host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                return _Server(tls, origin)
            return _Server(stream, origin)

    async def _allow(self, agent: str, proxy: _AgentProxy, client: _Client, target: Target) -> bool:
        """Whether ``agent`` may reach ``target``; if not, the client is refused and the denial reported."""
        if allowed(target, self.egress(agent)):
            return True
        seen = proxy.denied.pop(str(target), None) or _Denied()
        proxy.denied[str(target)] = seen
        while len(proxy.denied) > DENIED_KEPT:
            proxy.denied.popitem(last=False)
        seen.count += 1
        seen.last_at = time.time()
        if trio.current_time() - seen.reported_at >= DENIED_REPORT_SECONDS:
            seen.reported_at = trio.current_time()
            log.warning(
                "agent %r: egress to %s denied (%d so far): it is not in [agents.%s] egress",
                agent,
                target,
                seen.count,
                agent,
            )
            self.on_denied(agent, str(target), seen.count)
        await client.refuse(
            403,
            f"hyperhive proxy: {agent} may not connect to {target}. The operator allows it by adding "
            f'"{target}" to [agents.{agent}] egress (or egress in its agent.toml).',
        )
        return False

    async def _connect(
        self, agent: str, proxy: _AgentProxy, client: _Client, request: h11.Request
    ) -> trio.abc.HalfCloseableStream | None:
        """Answer a ``CONNECT``: the open connection to its target, or ``None`` once refused."""
        await client.discard_body()
        try:
            target = parse_target(request.target.decode("latin-1"))
        except InvalidTarget as exc:
            await client.refuse(400, f"hyperhive proxy: CONNECT {exc}")
            return None
        if not await self._allow(agent, proxy, client, target):
            return None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                remote = await _open_tcp(target, egress=True)
        except (OSError, trio.TooSlowError) as exc:
            await client.refuse(502, f"hyperhive proxy: cannot connect to {target}: {_reason(exc)}")
            return None
        try:
            await client.send(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
        except BaseException:
            await trio.aclose_forcefully(remote)
            raise
        log.debug("agent %r: tunnel to %s", agent, target)
        return remote


class _UpstreamFailed(Exception):
    """The upstream broke off, or sent something that is not HTTP."""


class _Client:
    """The sandbox's side of one connection: an h11 server."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.chunked = False
        """Whether the current request's body is chunked (rather than of a known length)."""

    @property
    def can_respond(self) -> bool:
        """Whether no response has begun (to a request, or to bytes that were not one)."""
        return self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def next_request(self) -> h11.Request | None:
        """The next request's head; ``None`` once the client has closed."""
        event = await self.next_event()
        if not isinstance(event, h11.Request):
            return None
        self.chunked = any(name == b"transfer-encoding" for name, _ in event.headers)
        if self.h11.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        return event

    async def next_event(self) -> Any:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            self.h11.receive_data(bytes(await self.stream.receive_some(READ_SIZE)))
        return event

    async def discard_body(self) -> None:
        """Read and drop what is left of the request, up to ``MAX_DISCARD`` bytes: a refused
        request's connection stays open for the next one, unless its body is big."""
        discarded = 0
        while self.h11.their_state is h11.SEND_BODY and discarded <= MAX_DISCARD:
            event = await self.next_event()
            discarded += len(event.data) if isinstance(event, h11.Data) else 0

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def refuse(self, status: int, text: str) -> None:
        """Answer with ``status`` and ``text``."""
        body = f"{text}\n".encode()
        await self._respond(status, [(b"content-type", b"text/plain; charset=utf-8")], body)

    async def respond_json(self, status: int, body: bytes) -> None:
        await self._respond(status, [(b"content-type", b"application/json")], body)

    async def _respond(self, status: int, headers: Headers, body: bytes) -> None:
        if self.h11.their_state is not h11.ERROR:
            await self.discard_body()
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if self.h11.their_state is h11.SEND_BODY:
            headers.append((b"connection", b"close"))
        await self.send(h11.Response(status_code=status, headers=headers))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    def next_cycle(self) -> bool:
        """Get ready for the client's next request; False if the connection cannot take one."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class _Server:
    """One connection to an upstream: an h11 client."""

    def __init__(self, stream: trio.abc.Stream, origin: Origin) -> None:
        self.stream = stream
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_since = trio.current_time()

    @property
    def reusable(self) -> bool:
        """Idle for a short while only, and with nothing to read: a server that closed the
        connection meanwhile has left its end of file there."""
        if trio.current_time() - self.idle_since >= UPSTREAM_IDLE_SECONDS:
            return False
        transport = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        assert isinstance(transport, trio.SocketStream)
        poller = select.poll()
        poller.register(transport.socket.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> Any:
        """The next event of the response; :class:`_UpstreamFailed` when it breaks off."""
        try:
            while (event := self.h11.next_event()) is h11.NEED_DATA:
                self.h11.receive_data(bytes(await self.stream.receive_some(READ_SIZE)))
        except (trio.BrokenResourceError, OSError, h11.RemoteProtocolError) as exc:
            raise _UpstreamFailed(_reason(exc)) from exc
        if isinstance(event, h11.ConnectionClosed):
            raise _UpstreamFailed("it closed the connection before answering")
        return event

    def next_cycle(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.idle_since = trio.current_time()
            return True
        return False

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def _relay(client: _Client, server: _Server, head: h11.Request) -> None:
    """The request up (``head``, then the body), then the response down, each piece as it comes.

    The response is abandoned the moment the client goes away: nothing then waits
    on an upstream that may never answer.
    """
    await _to_upstream(server, head)
    while True:
        event = await client.next_event()
        if isinstance(event, h11.Data):
            await _to_upstream(server, event)
        elif isinstance(event, h11.EndOfMessage):
            await _to_upstream(server, h11.EndOfMessage())
            break
        else:
            raise trio.BrokenResourceError("the client ended its request early")
    with trio.CancelScope() as response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_client, client, response)
            while not isinstance(event := await server.next_event(), h11.EndOfMessage):
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code != 101:
                        await client.send(h11.InformationalResponse(status_code=event.status_code, headers=[]))
                elif isinstance(event, h11.Response):
                    # Content-Length passes on; without one, h11 chunks the body to the client.
                    headers = _end_to_end(event.headers)
                    await client.send(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason))
                elif isinstance(event, h11.Data):
                    await client.send(event)
            await client.send(h11.EndOfMessage())
            nursery.cancel_scope.cancel()
    if response.cancelled_caught:
        raise trio.BrokenResourceError("the client went away before its response was done")


async def _to_upstream(server: _Server, event: Any) -> None:
    try:
        await server.send(event)
    except (trio.BrokenResourceError, OSError) as exc:
        raise _UpstreamFailed(f"it stopped reading the request: {_reason(exc)}") from exc


async def _watch_client(client: _Client, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` if the client closes while its response is on the way."""
    try:
        data = await client.stream.receive_some(READ_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    if data:
        client.h11.receive_data(bytes(data))  # a pipelined request: h11 keeps it for the next cycle
    else:
        scope.cancel()


async def _tunnel(client: _Client, remote: trio.abc.HalfCloseableStream) -> None:
    """Pipe bytes both ways until both sides have finished; one side breaking ends both."""
    trailing, _closed = client.h11.trailing_data

    async def pipe(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, first: bytes) -> None:
        try:
            if first:
                await sink.send_all(first)
            while data := await source.receive_some(READ_SIZE):
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    async with remote, trio.open_nursery() as nursery:
        nursery.start_soon(pipe, client.stream, remote, trailing)
        nursery.start_soon(pipe, remote, client.stream, b"")


async def _open_tcp(target: Target, *, egress: bool) -> trio.SocketStream:
    """A TCP connection to ``target``. For ``egress``, a name is connected only at its addresses
    that are not the host's loopback: a name on an agent's list is no way onto the host's own
    services (DNS rebinding). An address, or ``localhost``, means just that.

    :raises OSError: it cannot be reached (or resolves only to loopback).
    """
    if not egress or target.is_address or target.host == "localhost":
        return await trio.open_tcp_stream(target.host, target.port)
    infos = await trio.socket.getaddrinfo(target.host, target.port, type=trio.socket.SOCK_STREAM)
    found = dict.fromkeys(str(info[4][0]) for info in infos)
    failure = OSError(f"{target.host} resolves only to the host's own addresses (loopback, 0.0.0.0)")
    for address in found:
        if not _is_the_host(address):
            try:
                return await trio.open_tcp_stream(address, target.port)
            except OSError as exc:
                failure = exc
    raise failure


def _is_the_host(address: str) -> bool:
    """Whether connecting to ``address`` reaches this host: loopback, or "this network"
    (``0.0.0.0``, ``::``), which Linux connects to the host's own; IPv4-mapped forms too."""
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip in THIS_NETWORK


def _http_target(authority: str) -> Target:
    """The ``host:port`` of a plain-HTTP URL's authority, port 80 when it names none."""
    has_port = authority.rpartition(":")[2].isdigit() and not authority.endswith("]")
    return parse_target(authority if has_port else f"{authority}:80")


def _end_to_end(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """``headers`` without the hop-by-hop ones, nor any the ``Connection`` header names."""
    named = {token.strip().lower() for name, value in headers if name == b"connection" for token in value.split(b",")}
    return [(name, value) for name, value in headers if name not in HOP_BY_HOP and name not in named]


def _authority(url: str) -> str:
    """``host:port`` (or ``host``) of an absolute URL."""
    return url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].lower()


def _path_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    cut = min((index for index in (rest.find("/"), rest.find("?")) if index >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__  # trio's wrapper around the OSError or TLS error that says why
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CONNECT_TIMEOUT:.0f}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _api_error(client: _Client, text: str) -> None:
    """An Anthropic-style error: the CLI reports it and retries, as it would the API's own."""
    body = {"type": "error", "error": {"type": "api_error", "message": f"hyperhive model proxy: {text}"}}
    log.warning("model proxy: %s", text)
    await client.respond_json(502, json.dumps(body).encode())


async def _refuse_route(agent: str, client: _Client, method: str, path: str) -> None:
    """A model API request that is not Claude Code's: refused, not sent on with the daemon's key."""
    text = (
        f"{method} {path} is not one of the model API requests the hive sends on "
        "(POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models)"
    )
    log.warning("agent %r: model proxy: %s", agent, text)
    body = {"type": "error", "error": {"type": "permission_error", "message": f"hyperhive model proxy: {text}"}}
    await client.respond_json(403, json.dumps(body).encode())


async def _plain_error(client: _Client, text: str) -> None:
    await client.refuse(502, f"hyperhive proxy: {text}")


def make_model_proxy(hive: Hive) -> ModelProxy:
    """The daemon's proxy: to the rehearsal model when it runs, else to the configured
    endpoint with the daemon's credential; ``[agents.NAME] egress`` as each agent's list."""
    if hive.claude.base_url:
        where, url = "[claude] base_url", hive.claude.base_url
    else:
        where, url = "ANTHROPIC_BASE_URL", os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ENDPOINT
    configured = Upstream.from_url(url, credential_headers(os.environ), where=where)

    def upstream(agent: str) -> Upstream:
        if hive.rehearsal is None:
            return configured
        from hyperhive_core.rehearsal.server import API_KEY

        return Upstream.from_url(hive.rehearsal.base_url_for(agent), [(b"x-api-key", API_KEY.encode())])

    def denied(agent: str, target: str, count: int) -> None:
        hive.events.publish(agent, "egress_denied", target=target, count=count)

    return ModelProxy(upstream, lambda agent: hive.agents.get(agent).config.egress, denied)
