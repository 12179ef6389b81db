"""Naps: the tool, the parked loop, waking early, restarts, and the real CLI taking a nap."""

from __future__ import annotations

import datetime
import subprocess
import threading
import time
from functools import partial

import hyperhive_nap
import pytest
import trio
import trio.testing
from hyperhive_nap import NAPS

from hyperhive_core import ConfigError, hookimpl, iso_utc
from hyperhive_core.testing import HeldClock, call_tool, host_request, needs_claude, next_event, running_hive

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
WORKER = {"worker": {}}


class HoldTurns:
    """Stops every turn as it starts: these tests look at when turns start, not at Claude Code."""

    @hookimpl
    async def on_turn_start(self, hive, agent, turn):
        await trio.sleep_forever()


@pytest.fixture
def pm(make_pm):
    return make_pm(nap=hyperhive_nap)


@pytest.fixture
def held_pm(make_pm):
    return make_pm(nap=hyperhive_nap, hold=HoldTurns())


async def napping_after_restart(tmp_path, pm, seconds):
    """Let the worker take a nap, then stop the hive: the next start resumes the nap."""
    async with running_hive(tmp_path, pm, QUIET, agents=WORKER) as hive:
        text, is_error = await call_tool(hive, "worker", "nap", seconds=seconds)
        assert not is_error, text
        assert "End your turn now" in text
        return hive.stash[NAPS].wake_time("worker")


async def test_a_nap_survives_a_restart_and_holds_messages_until_it_ends(held_pm, tmp_path, autojump_clock):
    clock = HeldClock(autojump_clock)
    with trio.fail_after(3600):
        wake_at = await napping_after_restart(tmp_path, held_pm, 600)
        async with running_hive(tmp_path, held_pm, QUIET, agents=WORKER) as hive:
            napping = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
            assert napping.data["detail"] == iso_utc(wake_at)
            first = await hive.broker.send("operator", "worker", "one")
            second = await hive.broker.send("operator", "worker", "two")
            await clock.advance(590)
            assert hive.agents.get("worker").status.state.value == "napping"
            assert await hive.broker.inbox_depth("worker") == 2  # queued behind the nap
            await clock.advance(11)
            turn = await next_event(hive, "worker", "turn_start", after=napping.id)
            assert turn.data["message_ids"] == [first.id, second.id]  # handled together
            assert await hive.store.read(lambda db: db["nap_naps"].count) == 0  # gone for good


@pytest.mark.parametrize("how", ["cancel", "host command"])
async def test_the_operator_wakes_a_nap_early(held_pm, tmp_path, autojump_clock, how):
    clock = HeldClock(autojump_clock)
    with trio.fail_after(3600):
        await napping_after_restart(tmp_path, held_pm, 600)
        async with running_hive(tmp_path, held_pm, QUIET, agents=WORKER) as hive:
            napping = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
            message = await hive.broker.send("operator", "worker", "wake up")
            await clock.advance(60)
            start = trio.current_time()
            if how == "cancel":
                assert await hive.cancel("worker") is False  # no turn to interrupt; the nap ends
            else:
                woke = await host_request(hive, "wake", agent="worker")
                assert woke == {"agent": "worker", "woken": True}
            turn = await next_event(hive, "worker", "turn_start", after=napping.id)
            assert trio.current_time() - start < 1  # at once, not at the recorded time
            assert turn.data["message_ids"] == [message.id]
            assert await host_request(hive, "wake", agent="worker") == {"agent": "worker", "woken": False}
            notes = [e.data["text"] for e in await hive.events.history("worker") if e.type == "note"]
            assert "nap ended by the operator" in notes


async def test_a_cancel_while_the_nap_is_being_stored_still_ends_it(pm, tmp_path):
    """/cancel lands while the nap tool is still writing the nap: the agent does not sleep after all."""
    async with running_hive(tmp_path, pm, QUIET, agents=WORKER) as hive:
        release = threading.Event()
        async with trio.open_nursery() as nursery:
            # Hold the store's single writer, so the nap's write waits behind it.
            nursery.start_soon(hive.store.write, lambda db: release.wait(30))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(partial(call_tool, hive, "worker", "nap", seconds=600))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hive.cancel, "worker")
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert hive.stash[NAPS].wake_time("worker") is None
        assert await hive.store.read(lambda db: db["nap_naps"].count) == 0  # a restart does not bring it back
        message = await hive.broker.send("operator", "worker", "still awake?")
        with trio.fail_after(30):
            turn = await next_event(hive, "worker", "turn_start")
        assert turn.data["message_ids"] == [message.id]


async def test_a_nap_out_of_range_is_refused_clearly(pm, tmp_path):
    async with running_hive(tmp_path, pm, QUIET, agents=WORKER, nap={"max_seconds": 120}) as hive:
        for seconds in (0, -5, 121):
            text, is_error = await call_tool(hive, "worker", "nap", seconds=seconds)
            assert is_error
            assert text == (
                f"nap seconds must be from 1 to 120 ([nap] max_seconds), not {seconds}; "
                "to rest longer, nap again when you wake"
            )
        text, is_error = await call_tool(hive, "worker", "nap", seconds=1.5)
        assert is_error
        assert "invalid arguments for tool 'nap'" in text
        assert hive.stash[NAPS].wake_time("worker") is None


def test_max_seconds_must_be_positive(make_config, pm):
    with pytest.raises(
        ConfigError, match=r"hyperhive\.toml: \[nap\] max_seconds must be at least 1, not 0$"
    ) as refused:
        make_config(pm, nap={"max_seconds": 0})
    assert refused.value.key == "max_seconds"


NAPPER = """
[[agents.worker.rules]]
name = "nap"
when = "take a nap"
steps = [{ tool = "nap", input = { seconds = 600 } }, { text = "{{result}}" }]

[[agents.worker.rules]]
name = "after the nap"
steps = [{ text = "awake and reading" }]
"""


@needs_claude
@pytest.mark.slow
async def test_the_agent_naps_through_the_real_cli_and_the_cli_wakes_it(pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    async with running_hive(tmp_path, pm, NAPPER, agents=WORKER) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        await hive.broker.send("operator", "worker", "take a nap")
        with trio.fail_after(60):
            napping = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
        result = next(e for e in await hive.events.history("worker") if e.type == "tool_result")
        assert not result.data["is_error"]
        assert "End your turn now" in result.data["content"]
        wake_at = datetime.datetime.fromisoformat(napping.data["detail"]).timestamp()
        assert 590 < wake_at - time.time() <= 600
        snapshot = hive.agents.get("worker").snapshot()
        assert (snapshot["state"], snapshot["detail"]) == ("napping", napping.data["detail"])
        await hive.broker.send("operator", "worker", "are you there?")

        def cli(*args):
            env = clean_env | {"HYPERHIVE_LOAD_PLUGINS": "nap"}
            return subprocess.run([hyperhive, "-c", str(config), *args], capture_output=True, text=True, env=env)

        woke = await trio.to_thread.run_sync(cli, "wake", "worker")
        assert (woke.returncode, woke.stdout) == (0, "woke worker\n"), woke.stderr
        with trio.fail_after(60):
            end = await next_event(hive, "worker", "turn_end", after=napping.id)
        assert end.data["exit"] == "ok"
        assert hive.rehearsal.requests[-1].rule == "after the nap"
        again = await trio.to_thread.run_sync(cli, "wake", "worker")
        assert again.stdout == "worker was not napping\n"
        ghost = await trio.to_thread.run_sync(cli, "wake", "ghost")
        assert ghost.returncode == 1
        assert ghost.stderr == "Error: no agent named 'ghost'; known agents: manager, worker\n"
