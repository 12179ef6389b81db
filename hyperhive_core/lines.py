"""Newline-delimited lines from a trio stream: the one reader behind every JSON-lines peer.

Claude Code's stdout, the host socket and the agents' MCP sockets all speak one
JSON value per line. Each chunk received is searched once, from where the last
search stopped, so a long line arriving in many small chunks costs its length,
not its length squared.
"""

from __future__ import annotations

import trio

CHUNK_BYTES = 65536


class LineTooLong(Exception):
    """The peer sent more than ``limit`` bytes without a newline."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line is over {limit} bytes")
        self.limit = limit


class LineReader:
    """Lines received from ``stream``, each without its ``\\n`` (or ``\\r\\n``).

    :param max_line: the longest line accepted, in bytes; a longer one raises
        :class:`LineTooLong`, before the rest of it is read.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._stream = stream
        self._max_line = max_line
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the buffer's start known to hold no newline
        self._eof = False

    async def receive_line(self) -> bytes | None:
        """The next line, or ``None`` at the end of input.

        Bytes after the last newline when the peer closes are the last line. A
        broken or closed stream counts as the end of input: the peer has gone.

        :raises LineTooLong: the line is over ``max_line`` bytes.
        """
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            end = newline if newline >= 0 else len(self._buffer)
            if end > self._max_line:
                raise LineTooLong(self._max_line)
            if newline >= 0:
                return self._take(newline, newline + 1)
            if self._eof:
                return self._take(end, end) if self._buffer else None
            self._scanned = end
            try:
                chunk = await self._stream.receive_some(self._chunk_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    def _take(self, end: int, consumed: int) -> bytes:
        line = bytes(self._buffer[:end])
        del self._buffer[:consumed]
        self._scanned = 0
        return line.removesuffix(b"\r")
