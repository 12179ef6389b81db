"""What an agent's processes hold in memory, read from ``/proc``.

RSS counts every page a process has mapped in, shared ones included, and is cheap
to read (``statm``). PSS divides each shared page among the processes that share it,
so it adds up across processes; the kernel walks the page tables for it
(``smaps_rollup``), which takes a while for a large process: read it off the event
loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hyperhive_core.containers.cgroups import MIB

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
KIB = 1024


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it; processes that exit meanwhile are left out."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # gone
            continue
        found.append(pid)
        for task in tasks:
            try:
                pending += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                continue
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    """The summed resident set size of ``pids`` (shared pages counted in each)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def pss_bytes(pids: Iterable[int]) -> int:
    """The summed proportional set size of ``pids``: shared pages divided among their sharers."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * KIB
                break
    return total


def format_bytes(size: float) -> str:
    """``1.1 GiB``, ``180 MiB``, ``12 KiB``: a size as a log line or an event says it."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MIB)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{size / KIB:.0f} KiB"
