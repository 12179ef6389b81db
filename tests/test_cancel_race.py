"""No lost wake-up: a message sent just as a cancelled turn ends still starts the next turn.

After ``/cancel`` the loop holds the cancelled batch until a newer message waits. That
wait must see a message committed while the turn was still ending: these tests send one
0, 1, 5 and 20 ms after the cancel, many times over, and give the next turn 1 s to start.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_bwrap import needs_bwrap

from hyperhive_core.broker import Broker
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.store import Store
from hyperhive_core.testing import needs_claude, next_event, running_hive

# A long turn (the model takes ten minutes to answer) for "long", a quick one for anything with "hi".
SCENARIO = """
[[agents.manager.rules]]
when = "hi "
steps = [{ text = "ok" }]

[[agents.manager.rules]]
when = "long"
steps = [{ text = "too late", delay = 600 }]
"""
DELAYS_MS = (0, 1, 5, 20)
# The bound the next turn must start within, after the message that should start it.
NEXT_TURN_SECONDS = 1.0


async def cancel_then_send(hive, rounds: int) -> None:
    """Each round: a long turn, cancel it, send after each delay; the next turn starts within the bound."""
    after = 0
    for round_ in range(rounds):
        for delay_ms in DELAYS_MS:
            mark = hive.rehearsal.request_count
            long = await hive.broker.send("operator", "manager", f"long {round_}/{delay_ms}")
            with trio.fail_after(30):
                started = await next_event(
                    hive, "manager", "turn_start", lambda e, id=long.id: id in e.data["message_ids"], after=after
                )
                await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
            assert await hive.cancel("manager")
            await trio.sleep(delay_ms / 1000)
            hi = await hive.broker.send("operator", "manager", f"hi {round_}/{delay_ms}")
            with trio.fail_after(NEXT_TURN_SECONDS):
                next_turn = await next_event(
                    hive, "manager", "turn_start", lambda e, id=hi.id: id in e.data["message_ids"], after=started.id
                )
            # The cancelled message comes with the new one, nothing lost.
            assert next_turn.data["message_ids"] == [long.id, hi.id], f"round {round_}, {delay_ms} ms"
            with trio.fail_after(30):
                end = await next_event(hive, "manager", "turn_end", after=next_turn.id)
            assert end.data["exit"] == "ok"
            after = end.id
    assert await hive.broker.inbox_depth("manager") == 0


@needs_claude
@pytest.mark.slow
async def test_a_message_sent_as_a_cancelled_turn_ends_starts_the_next_turn(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await cancel_then_send(hive, rounds=10)


@needs_claude
@needs_bwrap
@pytest.mark.slow
async def test_in_bwrap_a_message_sent_as_a_cancelled_turn_ends_starts_the_next_turn(make_pm, tmp_path):
    sandboxes = {"container_backend": "bwrap"}
    uids = {"uid_range_start": 61700, "uid_range_size": 50}  # clear of a real hive's and the other tests'
    async with running_hive(tmp_path, make_pm(), SCENARIO, hive=sandboxes, bwrap=uids) as hive:
        await cancel_then_send(hive, rounds=2)


# -- the broker's wait, on its own ---------------------------------------------------


@pytest.fixture
async def broker(tmp_path, nursery):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    broker = Broker(store)
    broker.policy.add("worker")
    await nursery.start(broker.serve)
    yield broker
    store.close()


async def test_wait_for_arrival_sees_a_message_committed_before_it_began(broker):
    old = await broker.send("operator", "worker", "cancelled")
    new = await broker.send("operator", "worker", "arrived while the turn ended")
    with trio.fail_after(5):
        await broker.wait_for_arrival("worker", after_id=old.id)  # returns at once: no commit to wait for
    assert new.id > old.id


async def test_wait_for_arrival_waits_for_a_newer_message_and_ignores_older_ones(broker, nursery):
    batch_end = await broker.send("operator", "worker", "cancelled")
    arrived = trio.Event()

    async def wait() -> None:
        await broker.wait_for_arrival("worker", after_id=batch_end.id)
        arrived.set()

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()
    batch = await broker.lease("worker")
    await broker.release(batch, error="cancelled")  # the old message queued again wakes the waiter: not newer
    await trio.testing.wait_all_tasks_blocked()
    assert not arrived.is_set()
    await broker.send("operator", "worker", "new")
    with trio.fail_after(5):
        await arrived.wait()


async def test_wait_for_arrival_counts_only_mail_awaiting_delivery(broker):
    old = await broker.send("operator", "worker", "cancelled")
    await broker.send("operator", "worker", "handled already")
    batch = await broker.lease("worker")
    await broker.ack(batch)
    with trio.move_on_after(0.2) as waited:
        await broker.wait_for_arrival("worker", after_id=old.id)
    assert waited.cancelled_caught  # acked mail is not waiting for anyone
