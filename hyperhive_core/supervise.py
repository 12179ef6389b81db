"""Explicit supervision: restart a crashed task with backoff, never its siblings."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hyperhive_core.errors import HyperhiveError

log = logging.getLogger(__name__)

CrashHandler = Callable[[BaseException], Awaitable[bool]]


@dataclass
class Backoff:
    """Exponential delay between retries with full jitter, reset after a long enough healthy run.

    The n-th delay is drawn uniformly from ``[0, min(maximum, initial * 2**(n-1)))``,
    so many tasks that failed together (a hundred agents on one API outage) spread
    their retries out instead of retrying in lockstep.
    """

    initial: float = 0.5
    maximum: float = 30.0
    healthy_after: float = 60.0
    rng: Callable[[], float] = field(default=random.random, repr=False)
    """A number in ``[0, 1)`` per delay; tests pass their own for exact delays."""

    def ceiling(self, consecutive_failures: int) -> float:
        """The longest the ``consecutive_failures``-th delay can be."""
        return min(self.maximum, self.initial * 2 ** max(0, consecutive_failures - 1))

    def delay(self, consecutive_failures: int) -> float:
        return self.ceiling(consecutive_failures) * self.rng()


async def supervise(
    name: str,
    service: Callable[..., Awaitable[Any]],
    backoff: Backoff | None = None,
    *,
    on_crash: CrashHandler | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``service(task_status=...)`` until it returns, restarting it when it raises.

    Reports started once the service first reports started, or once it first
    crashes, so one broken service never holds up the daemon's startup.

    :param on_crash: awaited with each crash; returning True gives up for good.
    """
    backoff = backoff or Backoff()
    reported = False
    crashes = 0
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(service)
                if not reported:
                    task_status.started()
                    reported = True
            log.info("service %s finished", name)
            return
        except Exception as exc:
            crashes = 1 if trio.current_time() - began > backoff.healthy_after else crashes + 1
            delay = backoff.delay(crashes)
            if not reported:
                task_status.started()
                reported = True
            if on_crash is not None and await on_crash(exc):
                log.exception("%s crashed (%d in a row); giving up", name, crashes)
                return
            cause = root_cause(exc)
            if isinstance(cause, HyperhiveError):  # its message says what to do: no traceback
                log.error("%s crashed (%d in a row): %s; restarting in %.1fs", name, crashes, cause, delay)
            else:
                log.exception("%s crashed (%d in a row); restarting in %.1fs", name, crashes, delay)
            await trio.sleep(delay)


def root_cause(exc: BaseException) -> BaseException:
    """The exception inside nested single-member exception groups (what a nursery adds)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
