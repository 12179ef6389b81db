"""A sick model endpoint: stalls, dropped streams and server errors end in a successful turn once it heals.

Everything runs the real Claude Code CLI against the rehearsal model's fault modes
(``faults = ["hang"]`` and so on); ``stall_seconds`` is small so a stall is seconds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from hyperhive_core.claude import ClaudeSection, ModelWatch
from hyperhive_core.errors import ConfigError
from hyperhive_core.hostsock import request
from hyperhive_core.supervise import Backoff
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

STALL = 3.0


def reply_after(faults: str, extra: str = "") -> str:
    """A scenario whose first model request meets ``faults``; then it answers the operator."""
    return f"""
    [[agents.manager.rules]]
    steps = [
      {{ tool = "send", input = {{ to = "operator", body = "answered" }}, faults = {faults}{extra} }},
      {{ text = "done" }},
    ]
    """


async def details(hive, after: int = 0) -> list[str]:
    """The manager's state details so far, in order."""
    return [e.data["detail"] for e in await hive.events.history("manager", after_id=after) if e.type == "state_change"]


async def errors(hive) -> list[str]:
    return [e.data["text"] for e in await hive.events.history("manager") if e.type == "error"]


async def manager_requests(hive) -> list[tuple[int, str]]:
    return [(r.status, r.reply.split(" → ")[-1]) for r in hive.rehearsal.requests if r.method == "POST"]


async def assert_turn_succeeded_once(hive, message) -> None:
    """One turn handled the message, it ended ok, and the message was acked: nothing lost."""
    ends = [e for e in await hive.events.history("manager") if e.type == "turn_end"]
    assert [e.data["exit"] for e in ends] == ["ok"]
    starts = [e for e in await hive.events.history("manager") if e.type == "turn_start"]
    assert [e.data["message_ids"] for e in starts] == [[message.id]]
    assert await hive.broker.inbox_depth("manager") == 0
    assert [m.state for m in await hive.broker.recent_for("manager", 5)] == ["acked"]


@needs_claude
async def test_a_hung_request_is_interrupted_and_retried_until_the_endpoint_answers(make_pm, tmp_path):
    claude = {"stall_seconds": STALL}
    async with running_hive(tmp_path, make_pm(), reply_after('["hang"]'), claude=claude) as hive:
        message = await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            waiting = await next_event(
                hive, "manager", "state_change", lambda e: e.data["detail"].startswith("waiting on model API · ")
            )
            assert await operator_reply(hive, "manager") == "answered"
            await next_event(hive, "manager", "turn_end")
        assert waiting.data["state"] == "thinking"
        await assert_turn_succeeded_once(hive, message)
        assert await manager_requests(hive) == [
            (0, "hang"),
            (200, 'mcp__hyperhive__send {"to": "operator", "body": "answered"}'),
            (200, "'done'"),
        ]
        assert any(
            text.startswith(f"no progress from the model API for {STALL:.0f}s (stall)") for text in await errors(hive)
        )
        assert any(text.startswith("model API stalled; retrying the turn in ") for text in await errors(hive))
        assert not any("container crashed" in text for text in await errors(hive))  # the CLI answered the interrupt
        shown = await details(hive)
        assert any(detail.startswith("model API stalled; retrying in ") for detail in shown)
        assert shown[-1] == ""  # idle again


@needs_claude
async def test_the_wait_shows_in_the_state_the_cli_and_the_dashboard_read(make_pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    claude = {"stall_seconds": 2 * STALL}
    async with running_hive(tmp_path, make_pm(), reply_after('["hang"]'), claude=claude) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            await next_event(hive, "manager", "state_change", lambda e: e.data["detail"].startswith("waiting on"))
            status = await trio.to_thread.run_sync(request, hive.paths.host_socket, "status")

            def cli_status() -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [hyperhive, "-c", str(config), "status"], capture_output=True, text=True, env=clean_env
                )

            shown = await trio.to_thread.run_sync(cli_status)
            await operator_reply(hive, "manager")
        (manager,) = [agent for agent in status["agents"] if agent["name"] == "manager"]
        assert manager["state"] == "thinking"
        assert manager["detail"].startswith("waiting on model API · ")
        assert shown.returncode == 0, shown.stderr
        (line,) = [line for line in shown.stdout.splitlines() if line.startswith("manager ")]
        assert "thinking (waiting on model API · " in line


@needs_claude
async def test_a_stream_dropped_midway_is_retried(make_pm, tmp_path):
    claude = {"stall_seconds": STALL, "api_retries": 0}  # the hive retries, not the CLI
    async with running_hive(tmp_path, make_pm(), reply_after('["drop"]'), claude=claude) as hive:
        message = await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == "answered"
            await next_event(hive, "manager", "turn_end")
        await assert_turn_succeeded_once(hive, message)
        assert [status for status, _ in await manager_requests(hive)] == [200, 200, 200]
        assert (await manager_requests(hive))[0][1] == "drop"
        assert any(
            text.startswith("model API error (") and "retrying the turn in" in text for text in await errors(hive)
        )
        assert any(detail.startswith("model API error; retrying in ") for detail in await details(hive))


@needs_claude
async def test_server_errors_then_overload_are_retried_by_the_cli_then_the_hive(make_pm, tmp_path):
    claude = {"stall_seconds": STALL, "api_retries": 1}
    async with running_hive(tmp_path, make_pm(), reply_after("[500, 529]"), claude=claude) as hive:
        message = await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == "answered"
            await next_event(hive, "manager", "turn_end")
        await assert_turn_succeeded_once(hive, message)
        assert [status for status, _ in await manager_requests(hive)][:3] == [500, 529, 200]
        shown = await details(hive)
        # The CLI's own retry after the 500 shows at once; the 529 then fails the attempt, and the hive retries.
        assert any(
            detail.startswith("waiting on model API · ") and detail.endswith("· HTTP 500, retry 1 of 1")
            for detail in shown
        )
        assert any(detail.startswith("model API error; retrying in ") for detail in shown)


@needs_claude
async def test_a_cli_that_does_not_answer_the_interrupt_is_killed_and_resumed(make_pm, tmp_path):
    claude = {"stall_seconds": STALL}
    async with running_hive(tmp_path, make_pm(), reply_after('["hang"]'), claude=claude) as hive:
        message = await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager" and r.method == "POST")
            session = hive.harnesses["manager"].session
            stopped = session.pid
            os.kill(stopped, signal.SIGSTOP)  # hung: it will read no interrupt
            assert await operator_reply(hive, "manager") == "answered"
            await next_event(hive, "manager", "turn_end")
        await assert_turn_succeeded_once(hive, message)
        assert session.pid != stopped  # a new process, resumed
        assert not Path(f"/proc/{stopped}").exists()  # killed and reaped, not left behind
        texts = await errors(hive)
        assert "Claude Code did not answer the interrupt; killing it" in texts
        assert not any("container crashed" in text for text in texts)  # killed on purpose, not a crash


@needs_claude
async def test_a_long_streamed_answer_is_not_a_stall(make_pm, tmp_path):
    long_text = "A long answer, streamed slowly, one delta at a time. " * 8
    scenario = f'[[agents.manager.rules]]\nsteps = [{{ text = "{long_text}", stream_seconds = {3 * STALL} }}]\n'
    async with running_hive(tmp_path, make_pm(), scenario, claude={"stall_seconds": STALL}) as hive:
        message = await hive.broker.send("operator", "manager", "tell me everything")
        with trio.fail_after(60):
            end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "ok"  # streamed over three stall periods, without a stall
        await assert_turn_succeeded_once(hive, message)
        assert len(await manager_requests(hive)) == 1
        assert await errors(hive) == []


@needs_claude
async def test_a_long_tool_call_is_not_a_stall(make_pm, tmp_path):
    sleep = f'{{ tool = "Bash", input = {{ command = "sleep {2 * STALL:.0f}", description = "wait" }} }}'
    scenario = f'[[agents.manager.rules]]\nsteps = [{sleep}, {{ text = "rested" }}]\n'
    async with running_hive(tmp_path, make_pm(), scenario, claude={"stall_seconds": STALL}) as hive:
        message = await hive.broker.send("operator", "manager", "rest a while")
        with trio.fail_after(60):
            end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "ok"
        await assert_turn_succeeded_once(hive, message)
        assert len(await manager_requests(hive)) == 2
        assert await errors(hive) == []
        assert not any(detail.startswith("waiting on model API") for detail in await details(hive))


@needs_claude
async def test_a_cancel_ends_the_wait_to_retry(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), reply_after('["hang"]'), claude={"stall_seconds": STALL}) as hive:
        # A long, known wait before the retry.
        hive.harnesses["manager"].api_backoff = Backoff(initial=600, maximum=600, rng=lambda: 0.5)
        message = await hive.broker.send("operator", "manager", "question")
        with trio.fail_after(60):
            await next_event(
                hive, "manager", "state_change", lambda e: e.data["detail"].startswith("model API stalled; retrying")
            )
            assert hive.agents.get("manager").status.detail == "model API stalled; retrying in 300s (attempt 2 of 5)"
            assert await hive.cancel("manager")
            end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "interrupted"
        assert [m.state for m in await hive.broker.recent_for("manager", 5)] == ["queued"]  # kept for the next turn
        assert message.id == (await hive.broker.recent_for("manager", 5))[0].id


# -- the parts, on their own ------------------------------------------------------


def test_backoff_draws_each_delay_below_a_doubling_ceiling():
    backoff = Backoff(initial=5, maximum=30, rng=lambda: 0.5)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert [backoff.delay(n) for n in range(1, 6)] == [2.5, 5, 10, 15, 15]
    assert Backoff(initial=5, rng=lambda: 0.0).delay(3) == 0


def test_backoff_spreads_agents_that_failed_together():
    draw = random.Random(7)
    backoff = Backoff(initial=5, maximum=300, rng=draw.random)
    delays = [backoff.delay(2) for _ in range(100)]
    assert all(0 <= delay < 10 for delay in delays)
    assert len({round(delay, 3) for delay in delays}) > 90  # not in lockstep
    assert min(delays) < 1
    assert max(delays) > 9


def tool_use(tool_id: str) -> dict:
    return {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": tool_id}]}}


def tool_result(tool_id: str) -> dict:
    return {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": tool_id}]}}


def test_the_stall_clock_runs_only_while_the_model_is_awaited():
    watch = ModelWatch(stall_seconds=120, now=0)
    assert (watch.check_at(), watch.stalled(119), watch.stalled(120)) == (10, False, True)
    watch.saw({"type": "stream_event"}, now=100)  # a delta: progress
    assert not watch.stalled(200)
    assert watch.stalled(220)
    watch.saw(tool_use("a"), now=220)  # a tool runs: no clock at all
    assert watch.check_at() == float("inf")
    assert not watch.stalled(10_000)
    watch.saw(tool_result("a"), now=10_000)  # back to the model: the clock starts again
    assert watch.stalled(10_120)
    assert not watch.stalled(10_119)


def test_a_cli_retry_pushes_the_stall_back_and_is_shown_at_once():
    watch = ModelWatch(stall_seconds=120, now=0)
    retry = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 2, "retry_delay_ms": 30_000}
    watch.saw(retry | {"error_status": 529}, now=100)
    assert watch.check_at() == 100  # report it now
    assert watch.report(100) == "waiting on model API · 100s · HTTP 529, retry 1 of 2"
    assert not watch.stalled(249)
    assert watch.stalled(250)
    assert watch.check_at() == 105
    watch.saw(retry | {"error_status": None, "error": "unknown"}, now=101)
    assert watch.report(101).endswith("· unknown error, retry 1 of 2")
    assert watch.saw({"type": "stream_event"}, now=102)  # the wait that was shown is over
    assert watch.retry == ""
    assert not watch.shown


def test_system_lines_are_not_model_progress():
    watch = ModelWatch(stall_seconds=10, now=0)
    watch.saw({"type": "system", "subtype": "status", "status": "requesting"}, now=9)
    watch.saw({"type": "control_response"}, now=9)
    assert watch.stalled(10)
    assert ModelWatch(stall_seconds=0, now=0).check_at() == 10  # no stall, still reports a long wait


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stall_seconds": -1}, "[claude] stall_seconds must be zero or more seconds, not -1"),
        ({"api_error_backoff_seconds": -0.5}, "[claude] api_error_backoff_seconds must be zero or more seconds"),
        ({"turn_attempts": 0}, "[claude] turn_attempts must be at least 1, not 0"),
    ],
)
def test_claude_section_checks_its_values(values, message):
    with pytest.raises(ConfigError) as raised:
        ClaudeSection(**values)
    assert message in str(raised.value)
