"""The asyncio thread the NATS client runs on: calls from trio, cancellation, and a loop stopped mid-call."""

from __future__ import annotations

import asyncio

import pytest
import trio

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
