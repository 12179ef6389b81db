"""The line reader's cost (hyperhive_core.lines), one JSON line per figure.

Claude Code's stdout, the host socket and the MCP sockets all go through it. Two
shapes: many short lines (stream events) and one long line arriving in small chunks
(a big tool result), where a reader that searched the whole buffer after every chunk
would cost the line's length squared. Each figure is the median of ``--runs`` reads
over a real trio memory stream. Usage::

    .venv/bin/python bench/lines.py [--runs 5] [--long-mib 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio
import trio.testing

from hyperhive_core.lines import LineReader


async def read_through(payload: bytes, chunk: int, max_line: int) -> float:
    """Seconds to read every line of ``payload``, sent in ``chunk``-byte pieces."""
    send, receive = trio.testing.memory_stream_one_way_pair()
    lines = LineReader(receive, max_line, chunk_bytes=chunk)

    async def feed() -> None:
        for start in range(0, len(payload), chunk):
            await send.send_all(payload[start : start + chunk])
        await send.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        while await lines.receive_line() is not None:
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--long-mib", type=int, default=16)
    args = parser.parse_args()
    long_line = b"x" * (args.long_mib * 1024 * 1024) + b"\n"
    shapes = {
        "short_lines": (b'{"type":"stream_event","event":{"delta":"hello"}}\n' * 200_000, 65536),
        f"one_{args.long_mib}mib_line_in_64kib_chunks": (long_line, 65536),
        f"one_{args.long_mib}mib_line_in_4kib_chunks": (long_line, 4096),
    }
    for shape, (payload, chunk) in shapes.items():
        times = [trio.run(read_through, payload, chunk, len(long_line)) for _ in range(max(1, args.runs))]
        seconds = statistics.median(times)
        print(
            json.dumps(
                {
                    "shape": shape,
                    "bytes": len(payload),
                    "seconds": round(seconds, 4),
                    "mib_per_s": round(len(payload) / 2**20 / seconds, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
