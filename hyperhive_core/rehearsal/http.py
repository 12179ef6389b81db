"""Just enough of an HTTP/1.1 server for the rehearsal model: h11 over a trio stream."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import trio

from hyperhive_core.rehearsal.wire import new_id

MAX_BODY = 64 * 1024 * 1024
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Incoming:
    """One request as received: the path has no query string, header names are lowercase."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """A client's keep-alive connection: read a request, answer it, repeat."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.SERVER)

    @property
    def can_respond(self) -> bool:
        """True while no response has started for the current request."""
        return self._h11.our_state is h11.SEND_RESPONSE

    async def next_request(self) -> Incoming | None:
        """The next whole request; None once the client closed or the connection cannot be reused.

        :raises h11.RemoteProtocolError: a malformed request, or a body over ``MAX_BODY``.
        """
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        if self._h11.their_state is not h11.IDLE:
            return None
        request = await self._next_event()
        if not isinstance(request, h11.Request):
            return None
        body = bytearray()
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                return None
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError(f"request body over {MAX_BODY} bytes", error_status_hint=413)
        return Incoming(
            method=request.method.decode(),
            path=request.target.decode("latin-1").split("?", 1)[0],
            headers={name.decode().lower(): value.decode("latin-1") for name, value in request.headers},
            body=bytes(body),
        )

    async def send_json(self, status: int, payload: Any) -> None:
        """A whole JSON response; ``payload`` None sends an empty body (for ``HEAD``)."""
        data = b"" if payload is None else json.dumps(payload).encode()
        await self._send(h11.Response(status_code=status, headers=self._headers("application/json", len(data))))
        if data:
            await self._send(h11.Data(data=data))
        await self._send(h11.EndOfMessage())

    async def send_stream(
        self, content_type: str, chunks: Iterable[bytes], *, pace: float = 0.0, end: bool = True
    ) -> None:
        """A 200 response sent chunk by chunk (chunked transfer encoding).

        :param pace: seconds to wait between chunks.
        :param end: False leaves the response unfinished (a broken stream).
        """
        headers = [*self._headers(content_type), ("cache-control", "no-cache")]
        await self._send(h11.Response(status_code=200, headers=headers))
        for index, chunk in enumerate(chunks):
            if index and pace:
                await trio.sleep(pace)
            await self._send(h11.Data(data=chunk))
        if end:
            await self._send(h11.EndOfMessage())

    async def wait_closed(self) -> None:
        """Send nothing more; return once the client closes the connection."""
        while await self.stream.receive_some(READ_SIZE):
            pass

    @staticmethod
    def _headers(content_type: str, length: int | None = None) -> list[tuple[str, str]]:
        # The CLI shows a response's request-id in its events; a fresh one makes each traceable.
        headers = [("content-type", content_type), ("request-id", new_id("req"))]
        return headers if length is None else [*headers, ("content-length", str(length))]

    async def _next_event(self) -> Any:
        while (event := self._h11.next_event()) is h11.NEED_DATA:
            self._h11.receive_data(bytes(await self.stream.receive_some(READ_SIZE)))
        return event

    async def _send(self, event: Any) -> None:
        data = self._h11.send(event)
        if data:
            await self.stream.send_all(data)
