"""The asyncio thread the NATS client runs on: calls from trio, cancellation, and a loop stopped mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import trio
import trio.testing

from hyperhive_core.natsbridge import AsyncioThread, LoopStopped


async def test_a_call_returns_its_result_and_raises_its_error():
    bridge = AsyncioThread("test")
    try:

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        async def fail() -> None:
            raise ValueError("from the loop")

        assert await bridge.run(answer) == 42
        with pytest.raises(ValueError, match="from the loop"):
            await bridge.run(fail)
    finally:
        bridge.stop()


async def test_a_loop_stopped_mid_call_wakes_its_caller_and_refuses_new_calls():
    bridge = AsyncioThread("test")
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def forever() -> None:
        token.run_sync_soon(started.set)
        await asyncio.Event().wait()

    async def call() -> None:
        with pytest.raises(LoopStopped, match="stopped during the call"):
            await bridge.run(forever)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await started.wait()
            await trio.to_thread.run_sync(bridge.stop)  # as the broker's aclose does, with a call in flight
    assert not bridge.running
    with pytest.raises(LoopStopped, match="has stopped"):
        await bridge.run(forever)


async def test_a_call_queued_as_the_loop_stops_fails_at_once_instead_of_waiting_for_ever():
    bridge = AsyncioThread("test")
    holding, gate = threading.Event(), threading.Event()

    async def stop_when_let_go() -> None:
        holding.set()
        gate.wait()  # holds the loop while the next call is queued behind it
        asyncio.get_running_loop().stop()

    async def answer() -> int:
        return 42

    async def late() -> None:
        with pytest.raises(LoopStopped, match="stopped during the call"):
            await bridge.run(answer)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, stop_when_let_go)
            await trio.to_thread.run_sync(holding.wait)
            nursery.start_soon(late)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()  # the loop stops with the late call's start still queued: it never runs
    assert not bridge.running


async def test_a_cancelled_call_whose_coroutine_will_not_end_is_let_go_after_a_bound():
    bridge = AsyncioThread("test")

    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    try:
        with trio.fail_after(30):
            with trio.move_on_after(0.1) as cancelled:
                await bridge.run(stubborn)
        assert cancelled.cancelled_caught
    finally:
        await trio.to_thread.run_sync(bridge.stop)
    assert not bridge.running
