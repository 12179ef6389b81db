"""The wall clock set back while the hive is down: a nap it started still ends when it should."""

from __future__ import annotations

import time

import hyperhive_nap
import pytest
import trio
from hyperhive_nap import NAPS

from hyperhive_core import hookimpl
from hyperhive_core.testing import HeldClock, Script, call_tool, next_event, running_hive

pytestmark = pytest.mark.needs_claude

DAY = 86400.0


class HoldTurns:
    """Stops every turn as it starts: the test looks at when a turn starts, not at Claude Code."""

    @hookimpl
    async def on_turn_start(self, hive, agent, turn):
        await trio.sleep_forever()


async def test_a_nap_resumed_after_the_clock_went_back_lasts_no_longer_than_asked(
    make_pm, tmp_path, autojump_clock, monkeypatch
):
    pm = make_pm(nap=hyperhive_nap, hold=HoldTurns())
    clock = HeldClock(autojump_clock)
    script = Script()
    script.otherwise("ok")
    with trio.fail_after(3 * DAY):
        async with running_hive(tmp_path, pm, script, agents={"worker": {}}) as hive:
            text, is_error = await call_tool(hive, "worker", "nap", seconds=600)
            assert not is_error, text
        # While the hive is down, the host's clock is set back a day (a bad RTC, an NTP step).
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - DAY)
        async with running_hive(tmp_path, pm, script, agents={"worker": {}}) as hive:
            napping = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
            await hive.broker.send("operator", "worker", "wake up")
            # Not a day later: woken by the nap's own 600 s, in virtual time.
            with trio.fail_after(700):
                await clock.advance(601)
                turn = await next_event(hive, "worker", "turn_start", after=napping.id)
            assert turn.data["message_ids"]
            assert hive.stash[NAPS].wake_time("worker") is None
