"""The line reader behind Claude Code's stdout, the host socket and the MCP sockets."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hyperhive_core.lines import LineReader, LineTooLong


async def read_all(chunks: list[bytes], max_line: int = 100, chunk_bytes: int = 65536) -> list[bytes]:
    """Send ``chunks`` one at a time into a real trio memory stream, then close it; every line read."""
    send, receive = trio.testing.memory_stream_one_way_pair()
    lines = LineReader(receive, max_line, chunk_bytes)
    got: list[bytes] = []

    async def feed() -> None:
        for chunk in chunks:
            await send.send_all(chunk)
            await trio.testing.wait_all_tasks_blocked()  # the reader takes each chunk alone
        await send.aclose()

    refused: LineTooLong | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        try:
            while (line := await lines.receive_line()) is not None:
                got.append(line)
        except LineTooLong as exc:
            refused = exc
            nursery.cancel_scope.cancel()  # the feeder would wait forever for a reader
    if refused:
        raise refused
    return got


async def test_lines_split_across_chunks_come_out_whole():
    chunks = [b'{"a"', b": 1}\n{", b'"b": 2}\n\n', b"x", b"y", b"z\n"]
    assert await read_all(chunks) == [b'{"a": 1}', b'{"b": 2}', b"", b"xyz"]


async def test_many_lines_in_one_chunk():
    assert await read_all([b"one\ntwo\nthree\n"]) == [b"one", b"two", b"three"]


async def test_crlf_ends_a_line_too():
    assert await read_all([b"one\r", b"\ntwo\r\n"]) == [b"one", b"two"]


async def test_a_partial_line_at_the_end_of_input_is_the_last_line():
    assert await read_all([b"one\ntw", b"o"]) == [b"one", b"two"]
    assert await read_all([]) == []


async def test_a_line_at_the_limit_passes_and_one_byte_more_is_refused():
    assert await read_all([b"x" * 10 + b"\n"], max_line=10) == [b"x" * 10]
    with pytest.raises(LineTooLong, match="^a line is over 10 bytes$"):
        await read_all([b"x" * 11 + b"\n"], max_line=10)


async def test_an_endless_line_is_refused_before_it_is_all_read():
    """Fed in small chunks with no newline: refused once past the limit, not at the end of input."""
    send, receive = trio.testing.memory_stream_one_way_pair()
    lines = LineReader(receive, 1000, chunk_bytes=64)
    sent = 0

    async def feed() -> None:
        nonlocal sent
        for _ in range(100):  # 6400 bytes at most, never a newline
            await send.send_all(b"y" * 64)
            sent += 64
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        with pytest.raises(LineTooLong) as caught:
            await lines.receive_line()
        nursery.cancel_scope.cancel()
    assert caught.value.limit == 1000
    assert 1000 < sent <= 1000 + 2 * 64


async def test_a_broken_stream_is_the_end_of_input():
    class Broken(trio.abc.ReceiveStream):
        def __init__(self) -> None:
            self.chunks = [b"kept\npart"]

        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            if self.chunks:
                return self.chunks.pop()
            raise trio.BrokenResourceError("connection reset")

        async def aclose(self) -> None:
            pass

    lines = LineReader(Broken(), 100)
    assert [await lines.receive_line(), await lines.receive_line(), await lines.receive_line()] == [
        b"kept",
        b"part",
        None,
    ]
