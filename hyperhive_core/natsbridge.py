"""The one place asyncio meets trio: nats-py runs on an asyncio loop in a thread of its own.

nats-py is an asyncio library; the daemon is trio. Of the two ways to join them,
trio-asyncio would run asyncio *inside* trio, which means every entry point that
may touch the broker (the daemon, tests, scripts, benchmarks) must open its loop
first, and nats-py's reconnect logic, pings and flusher would be scheduled by
trio-asyncio's emulation. Instead one daemon thread runs a plain asyncio loop that
owns the NATS connection, and trio code calls into it through ``AsyncioThread.run``:
the coroutine is started with ``call_soon_threadsafe`` and its end wakes the trio
task with ``TrioToken.run_sync_soon``, so a waiting call holds no thread. A call
costs two cross-thread hops; nats-py keeps its own timers and reconnects whatever
trio is doing.

Cancelling the trio side cancels the asyncio task and waits for it to finish (for
at most ``STOP_SECONDS``), so nothing runs on behind the caller's back; a result
that was ready anyway goes to the call's ``abandoned`` callback (the broker gives
fetched messages back). Stopping the loop cancels whatever still runs on it, and
every caller still waiting, or calling after, gets ``LoopStopped`` at once: once
the loop has stopped, no call waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeGuard, TypeVar

import trio

T = TypeVar("T")
# How long stopping waits for the calls still running to end once cancelled.
STOP_SECONDS = 2.0


class LoopStopped(ConnectionError):
    """The loop was stopped before or while a call ran on it: its connection is closed."""


class AsyncioThread:
    """An asyncio event loop in a daemon thread; ``run`` awaits a coroutine on it from trio."""

    def __init__(self, name: str = "nats") -> None:
        self._loop = asyncio.new_event_loop()
        # Wakes each trio caller still waiting; once the loop ends (``_stopped``) nothing is
        # scheduled on it, and every waiter left is woken, so no call waits on a dead loop.
        self._lock = threading.Lock()
        self._stopped = False
        self._waiters: set[Callable[[], None]] = set()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with self._lock:
                self._stopped = True
                waiters, self._waiters = self._waiters, set()
            for wake in waiters:
                wake()
            self._loop.close()

    @property
    def running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def _schedule(self, callback: Callable[[], None], wake: Callable[[], None] | None = None) -> None:
        """Run ``callback`` on the loop, ``wake`` too if the loop ends first; ``LoopStopped`` if it has."""
        with self._lock:
            if self._stopped:
                raise LoopStopped("the NATS client's event loop has stopped")
            if wake is not None:
                self._waiters.add(wake)
            self._loop.call_soon_threadsafe(callback)

    async def run(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        *,
        abandoned: Callable[[T], Coroutine[Any, Any, None]] | None = None,
    ) -> T:
        """Run ``make()`` on the loop; return its result or raise its exception.

        :param abandoned: if the trio caller is cancelled but the coroutine finished
            with a result anyway, it is handed to this coroutine (on the loop), so
            it can be given back instead of dropped.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict[str, asyncio.Task[T]] = {}

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the trio side is gone; nobody waits
                token.run_sync_soon(done.set)

        def finished(_: asyncio.Future[T]) -> None:
            with self._lock:
                self._waiters.discard(wake)
            wake()

        def start() -> None:
            task = box["task"] = self._loop.create_task(make())
            task.add_done_callback(finished)

        def cancel() -> None:
            box["task"].cancel()

        self._schedule(start, wake)
        try:
            await done.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                # Callbacks run in order, so the task exists by the time cancel runs.
                with contextlib.suppress(LoopStopped):
                    self._schedule(cancel)
                # A coroutine that ignores its cancellation is not waited on for ever.
                with trio.move_on_after(STOP_SECONDS):
                    await done.wait()
                ended = box.get("task")
                if abandoned is not None and _succeeded(ended):
                    result = ended.result()
                    with contextlib.suppress(LoopStopped):
                        await self.run(lambda: abandoned(result))
            raise
        task = box.get("task")
        if task is None or not task.done() or task.cancelled():  # not by this caller: the loop stopped
            raise LoopStopped("the NATS client's event loop stopped during the call")
        return task.result()

    def stop(self) -> None:
        """Stop the loop and its thread (after the caller closed what runs on it), cancelling what still runs."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._shutdown()))
            self._thread.join(timeout=STOP_SECONDS + 5)

    async def _shutdown(self) -> None:
        """On the loop: cancel every other task, so each caller wakes, then stop."""
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_SECONDS)
        self._loop.stop()


def _succeeded(task: asyncio.Task[T] | None) -> TypeGuard[asyncio.Task[T]]:
    """Whether ``task`` ran to a result (not cancelled, not still running on a stopped loop, no error)."""
    return task is not None and task.done() and not task.cancelled() and task.exception() is None
