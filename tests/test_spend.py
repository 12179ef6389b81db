"""Honest spend: the rehearsal model is free, and the daily cap pauses an agent until resumed, across restarts."""

from __future__ import annotations

import datetime

import pytest
import trio

from hyperhive_core.harness import spent_today
from hyperhive_core.rehearsal import RehearsalServer, parse_scenario
from hyperhive_core.testing import needs_claude, next_event, running_hive

pytestmark = needs_claude

SCENARIO = '[[agents."*".rules]]\nsteps = [{ text = "costly" }]\n'
TINY_CAP = {"daily_spend_cap_usd": 0.000001}


@pytest.fixture
async def priced(nursery, monkeypatch) -> RehearsalServer:
    """A rehearsal server the hive takes for Claude, so the CLI prices its tokens as real ones."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")  # the CLI will not start without one
    return await nursery.start(RehearsalServer(parse_scenario(SCENARIO)).serve)


async def stored_row(hive) -> dict:
    return (await hive.agents.stored())["manager"]


async def test_rehearsal_turns_cost_nothing_and_never_reach_the_cap(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO, claude=TINY_CAP) as hive:
        after = 0
        for body in ("one", "two", "three"):
            await hive.broker.send("operator", "manager", body)
            with trio.fail_after(60):
                end = await next_event(hive, "manager", "turn_end", after=after)
            assert (end.data["exit"], end.data["cost_usd"]) == ("ok", 0)
            assert end.data["usage"]["input_tokens"] > 0  # the CLI did count tokens; they are just free
            after = end.id
        assert await hive.store.read(lambda db: spent_today(db, "manager")) == 0
        assert not hive.agents.get("manager").status.paused
        assert await hive.broker.inbox_depth("manager") == 0


async def test_the_cap_pauses_and_resuming_lifts_it_for_the_day_across_restarts(make_pm, tmp_path, priced):
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    with trio.fail_after(120):
        async with running_hive(tmp_path, make_pm(), SCENARIO, endpoint=priced.url, claude=TINY_CAP) as hive:
            await hive.broker.send("operator", "manager", "one")
            first = await next_event(hive, "manager", "turn_end")
            assert first.data["cost_usd"] > 0
            paused = await next_event(hive, "manager", "state_change", lambda e: e.data["paused"])
            await hive.broker.send("operator", "manager", "two")
            reason = paused.data["pause_reason"]
            assert reason.startswith("daily spend cap reached: $")
            assert "`hyperhive resume manager`" in reason
            assert "resume on the dashboard" in reason
            assert "[claude] daily_spend_cap_usd" in reason
            assert await hive.broker.inbox_depth("manager") == 1  # "two" waits

        # Restarted while paused: still paused by the cap, and "two" still waits.
        async with running_hive(tmp_path, make_pm(), SCENARIO, endpoint=priced.url, claude=TINY_CAP) as hive:
            status = hive.agents.get("manager").status
            assert (status.paused, status.pause_reason) == (True, reason)
            assert await hive.broker.inbox_depth("manager") == 1
            await hive.resume("manager")  # the operator lifts the cap for the rest of the day
            second = await next_event(hive, "manager", "turn_end", after=paused.id)
            assert second.data["cost_usd"] > 0
            assert status.spend_cap_lifted_on == today
            assert not status.paused
            assert await hive.broker.inbox_depth("manager") == 0

        # Restarted again: the cap stays lifted today, though today's spend is over it.
        async with running_hive(tmp_path, make_pm(), SCENARIO, endpoint=priced.url, claude=TINY_CAP) as hive:
            assert await hive.store.read(lambda db: spent_today(db, "manager")) > TINY_CAP["daily_spend_cap_usd"]
            row = await stored_row(hive)
            assert (row["paused"], row["pause_reason"], row["spend_cap_lifted_on"]) == (0, "", today)
            await hive.broker.send("operator", "manager", "three")
            third = await next_event(hive, "manager", "turn_end", after=second.id)
            assert third.data["exit"] == "ok"
            assert not hive.agents.get("manager").status.paused
            assert await hive.broker.inbox_depth("manager") == 0


async def test_resuming_an_agent_paused_by_the_operator_leaves_the_cap_alone(make_pm, tmp_path, priced):
    """Only a cap pause lifts the cap when resumed; an operator's pause and resume do not."""
    with trio.fail_after(60):
        async with running_hive(tmp_path, make_pm(), SCENARIO, endpoint=priced.url, claude=TINY_CAP) as hive:
            await hive.pause("manager")
            await hive.resume("manager")
            assert hive.agents.get("manager").status.spend_cap_lifted_on is None
            await hive.broker.send("operator", "manager", "one")
            end = await next_event(hive, "manager", "turn_end")
            paused = await next_event(hive, "manager", "state_change", lambda e: e.data["paused"], after=end.id)
            assert paused.data["pause_reason"].startswith("daily spend cap reached")
