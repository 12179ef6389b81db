"""The wall clock set back while the hive is down: a nap or a question's TTL still ends when it should."""

from __future__ import annotations

import json
import time

import hyperhive_nap
import hyperhive_questions
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


def answers_ok() -> Script:
    script = Script()
    script.otherwise("ok")
    return script


def set_back_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the hive is down, the host's clock is set back a day (a bad RTC, an NTP step)."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - DAY)


async def test_a_nap_resumed_after_the_clock_went_back_lasts_no_longer_than_asked(
    make_pm, tmp_path, autojump_clock, monkeypatch
):
    pm = make_pm(nap=hyperhive_nap, hold=HoldTurns())
    clock = HeldClock(autojump_clock)
    script = answers_ok()
    with trio.fail_after(3 * DAY):
        async with running_hive(tmp_path, pm, script, agents={"worker": {}}) as hive:
            text, is_error = await call_tool(hive, "worker", "nap", seconds=600)
            assert not is_error, text
        set_back_a_day(monkeypatch)
        async with running_hive(tmp_path, pm, script, agents={"worker": {}}) as hive:
            napping = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
            await hive.broker.send("operator", "worker", "wake up")
            # Not a day later: woken by the nap's own 600 s, in virtual time.
            with trio.fail_after(700):
                await clock.advance(601)
                turn = await next_event(hive, "worker", "turn_start", after=napping.id)
            assert turn.data["message_ids"]
            assert hive.stash[NAPS].wake_time("worker") is None


async def test_a_question_resumed_after_the_clock_went_back_expires_within_its_ttl(
    make_pm, tmp_path, autojump_clock, monkeypatch
):
    pm = make_pm(questions=hyperhive_questions, hold=HoldTurns())
    clock = HeldClock(autojump_clock)
    script = answers_ok()
    with trio.fail_after(3 * DAY):
        async with running_hive(tmp_path, pm, script) as hive:
            text, is_error = await call_tool(hive, "manager", "ask_operator", question="Deploy?", ttl_seconds=600)
            assert not is_error, text
        set_back_a_day(monkeypatch)
        async with running_hive(tmp_path, pm, script) as hive:
            with trio.fail_after(700):  # virtual time: its TTL, not a day more
                await clock.advance(601)
                await next_event(hive, "manager", "turn_start")
            bodies = [json.loads(m.body) for m in await hive.broker.recent_for("manager", 10) if m.sender == "hive"]
            assert [(body["event"], body["status"]) for body in bodies] == [("operator_answered", "expired")]
