"""Helpers for the dashboard's tests (and bench/dashboard.py): a hive with the web plugin, HTTP, Chromium.

The HTTP client is h11 over trio sockets, so tests talk to the real server the way a
browser does, headers included, and can forge what a browser never would (a
foreign Origin). Chromium runs through playwright's sync API on a thread of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
import wsproto
import wsproto.events
from hyperhive_web import dashboard_of

from hyperhive_core import Hive
from hyperhive_core.testing import Chromium, running_hive


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SseMessage:
    id: str | None = None
    event: str = "message"
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class Http:
    """Requests to one server; ``headers`` go with every request."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = dict(headers or {})

    def _headers(self, headers: Mapping[str, str] | None, body: bytes | None) -> list[tuple[str, str]]:
        merged = {"Host": f"{self.host}:{self.port}", "Connection": "close", **self.headers, **(headers or {})}
        if body is not None:
            merged["Content-Length"] = str(len(body))
        return [(name, value) for name, value in merged.items() if value is not None]

    @asynccontextmanager
    async def _open(
        self, method: str, path: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> AsyncIterator[tuple[trio.SocketStream, h11.Connection, h11.Response]]:
        stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(method=method, target=path, headers=self._headers(headers, body))
            await stream.send_all(connection.send(request))
            if body is not None:
                await stream.send_all(connection.send(h11.Data(data=body)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response | h11.InformationalResponse):
                    yield stream, connection, event  # type: ignore[misc]
                    return

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self._open(method, path, headers, body) as (stream, connection, response):
            chunks = []
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            headers_out = {name.decode().lower(): value.decode() for name, value in response.headers}
            return Reply(response.status_code, headers_out, b"".join(chunks))

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Reply:
        return await self.request("POST", path, json_body=json_body if json_body is not None else {}, **kwargs)

    async def websocket_handshake(self, path: str, headers: Mapping[str, str] | None = None) -> int:
        """The status a websocket upgrade gets: 101 when accepted."""
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **(headers or {}),
        }
        async with self._open("GET", path, upgrade, None) as (_, _, response):
            return response.status_code

    @asynccontextmanager
    async def websocket(self, path: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[WebSocket]:
        """An accepted websocket; raises AssertionError if the upgrade is refused."""
        extra = [(name, value) for name, value in {**self.headers, **(headers or {})}.items() if value is not None]
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        stream = await trio.open_tcp_stream(self.host, self.port)
        async with stream:
            request = wsproto.events.Request(host=f"{self.host}:{self.port}", target=path, extra_headers=extra)
            await stream.send_all(connection.send(request))
            while True:
                connection.receive_data(await stream.receive_some(65536))
                for event in connection.events():
                    assert not isinstance(event, wsproto.events.RejectConnection), f"refused: {event.status_code}"
                    if isinstance(event, wsproto.events.AcceptConnection):
                        yield WebSocket(stream, connection)
                        return

    @asynccontextmanager
    async def sse(self, path: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[SseStream]:
        """An open event stream; raises AssertionError if the server answers anything but 200."""
        wanted = {"Accept": "text/event-stream", **(headers or {})}
        async with self._open("GET", path, wanted, None) as (stream, connection, response):
            assert response.status_code == 200, f"SSE {path}: HTTP {response.status_code}"
            yield SseStream(stream, connection)


class WebSocket:
    """A websocket client on wsproto, closing its socket whichever side ends the session."""

    def __init__(self, stream: trio.SocketStream, connection: wsproto.WSConnection) -> None:
        self._stream = stream
        self._connection = connection
        self._pending: list[wsproto.events.Event] = []
        self.close_reason: str | None = None

    async def send(self, data: str | bytes) -> None:
        message = wsproto.events.TextMessage(data) if isinstance(data, str) else wsproto.events.BytesMessage(data)
        await self._stream.send_all(self._connection.send(message))

    async def receive(self) -> str | bytes | None:
        """The next message; ``None`` once the server has closed the websocket (see ``close_reason``)."""
        while True:
            for event in self._connection.events():
                if isinstance(event, wsproto.events.Message):
                    return event.data
                if isinstance(event, wsproto.events.CloseConnection):
                    self.close_reason = event.reason
                    await self._stream.send_all(self._connection.send(event.response()))
                    return None
                if isinstance(event, wsproto.events.Ping):
                    await self._stream.send_all(self._connection.send(event.response()))
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._connection.receive_data(data)


class SseStream:
    """Messages of an open event stream, parsed as a browser's EventSource does."""

    def __init__(self, stream: trio.SocketStream, connection: h11.Connection) -> None:
        self._stream = stream
        self._connection = connection
        self._buffer = b""

    def __aiter__(self) -> SseStream:
        return self

    async def __anext__(self) -> SseMessage:
        while b"\n\n" not in self._buffer:
            event = self._connection.next_event()
            if event is h11.NEED_DATA:
                data = await self._stream.receive_some(65536)
                self._connection.receive_data(data)
            elif isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
            else:
                raise StopAsyncIteration
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        message = SseMessage()
        lines = []
        for line in block.decode().split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message.comments.append(value)
            elif name == "id":
                message.id = value
            elif name == "event":
                message.event = value
            elif name == "data":
                lines.append(value)
        message.data = "\n".join(lines)
        return message


def fork_as(uid: int, work: Callable[[], object]) -> int:
    """Run ``work`` in a forked child with ``uid`` (and that gid, no groups); return the child's pid.

    A fork, not an exec: the test's interpreter may live where another uid cannot
    reach it. So ``work`` must import nothing, not even lazily (``create_connection``
    loads the idna codec): plain sockets to numeric addresses. The child exits with 0
    if ``work`` returned, 1 if it raised.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        work()
        code = 0
    finally:
        os._exit(code)


# -- hives, sessions and the browser -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"

# worker answers the operator, thinking 1.5 s first (long enough to see the badge say so);
# "slow" keeps a turn open long enough to cancel it or queue a model.
SCENARIO = """
[[agents.worker.rules]]
name = "slow"
when = "slow"
steps = [{ text = "thinking it over…", delay = 30 }]

[[agents.worker.rules]]
name = "answer"
when_regex = '(?s)from operator \\(text\\) ---\\n(?P<body>.*?)(?:\\n\\n--- message|\\Z)'
steps = [
  { text = "on it", tool = "send", input = { to = "operator", body = "pong: {{match.body}}" }, delay = 1.5 },
  { text = "answered the operator" },
]

[[agents."*".rules]]
steps = [{ text = "nothing scripted" }]
"""


@asynccontextmanager
async def dashboard_hive(
    tmp_path: Path, pm: Any, scenario: str = SCENARIO, web: dict[str, Any] | None = None, **kwargs: Any
) -> AsyncIterator[Hive]:
    """A running hive (process backend, rehearsal model) serving the dashboard on a free port."""
    async with running_hive(tmp_path, pm, scenario, web={"port": 0, **(web or {})}, **kwargs) as hive:
        yield hive


def operator(hive: Hive) -> Http:
    """The operator's script: the token as a bearer token, as `hyperhive attach` sends it."""
    return Http(dashboard_of(hive).url, {"Authorization": f"Bearer {dashboard_of(hive).token}"})


async def browser_session(hive: Hive) -> tuple[Http, str]:
    """A logged-in browser's cookie and CSRF token, sending the dashboard's own Origin."""
    anonymous = Http(dashboard_of(hive).url)
    login = await anonymous.get(f"/login?token={dashboard_of(hive).token}")
    assert login.status == 303, login.body
    cookie = login.headers["set-cookie"].split(";", 1)[0]
    client = Http(
        dashboard_of(hive).url, {"Cookie": cookie, "Origin": dashboard_of(hive).url, "Sec-Fetch-Site": "same-origin"}
    )
    page = (await client.get("/")).body.decode()
    csrf = page.split('name="hyperhive-csrf" content="', 1)[1].split('"', 1)[0]
    return client, csrf


class Browser(Chromium):
    """The test kit's Chromium, with fresh pages that are not logged in (the login tests start there)."""

    async def page(self) -> Any:
        """A fresh page in a fresh context (its own cookies)."""

        def open_page() -> Any:
            return self.new_context().new_page()

        return await self.run(open_page)


def screenshot(page: Any, name: str) -> Path:
    """Keep what the page looked like, under test-artifacts/web/, to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
