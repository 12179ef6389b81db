"""The agent runtime end to end: real Claude Code CLI, rehearsal model, real sqlite."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from hyperhive_core import claude, hookimpl
from hyperhive_core.broker import Message
from hyperhive_core.claude import MissingCli
from hyperhive_core.harness import render_batch, render_event
from hyperhive_core.rehearsal import Director, load_demo_scenario
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

pytestmark = needs_claude

DELEGATION = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "worker", body = "please report" } },
  { text = "asked the worker" },
]

[[agents.worker.rules]]
when = "please report"
steps = [
  { tool = "send", input = { to = "operator", body = "report: all quiet" } },
  { text = "done" },
]
"""


async def test_operator_to_manager_to_worker_and_back(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), DELEGATION, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "manager", "status please")
        with trio.fail_after(60):
            assert await operator_reply(hive, "worker") == "report: all quiet"
        manager_sent = await hive.broker.recent_from("manager", 10)
        assert [(m.recipient, m.body) for m in manager_sent] == [("worker", "please report")]
        assert await hive.broker.inbox_depth("manager") == 0  # acked
        end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "ok"
        assert end.data["tool_calls"] == 1
        assert end.data["tools"] == ["send"]
        assert end.data["cost_usd"] == 0  # the rehearsal model is free, whatever the CLI prices it at
        assert hive.agents.get("manager").status.last_turn_ms == end.data["duration_ms"]


async def test_hook_on_turn_start(make_pm, tmp_path):
    seen = []

    class Watcher:
        @hookimpl
        def on_turn_start(self, hive, agent, turn):
            seen.append((agent, [m.body for m in turn.messages], hive.agents.get(agent).status.state.value))

    async with running_hive(tmp_path, make_pm(watcher=Watcher()), DELEGATION, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "manager", "status please")
        with trio.fail_after(60):
            await operator_reply(hive, "worker")
    assert seen[:2] == [("manager", ["status please"], "thinking"), ("worker", ["please report"], "thinking")]


async def test_hook_on_turn_end(make_pm, tmp_path):
    ended = trio.Event()
    seen = []

    class Watcher:
        @hookimpl
        async def on_turn_end(self, hive, agent, turn):
            seen.append((agent, turn.exit, turn.result.tools_used, turn.duration_ms > 0))
            ended.set()

    async with running_hive(tmp_path, make_pm(watcher=Watcher()), DELEGATION, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "manager", "status please")
        with trio.fail_after(60):
            await ended.wait()
    assert seen[0] == ("manager", "ok", ["send"], True)


async def test_hook_before_recv(make_pm, tmp_path):
    """A before_recv implementation holds the loop: messages queue until it lets go."""
    release = trio.Event()

    class Gate:
        @hookimpl
        async def before_recv(self, hive, agent):
            if agent == "worker":
                await release.wait()

    async with running_hive(tmp_path, make_pm(gate=Gate()), DELEGATION, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "manager", "status please")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
        assert await hive.broker.inbox_depth("worker") == 1  # queued behind the gate
        release.set()
        with trio.fail_after(60):
            assert await operator_reply(hive, "worker") == "report: all quiet"


async def test_hook_configure_session(make_pm, tmp_path):
    class Configure:
        @hookimpl
        def configure_session(self, hive, agent, options):
            options.system_prompt.append(f"SECRET-WORD-FOR-{agent}")
            options.env["HYPERHIVE_TEST_MARK"] = "1"

    scenario = '[[agents.manager.rules]]\nsteps = [{ text = "ok" }]\n'
    async with running_hive(tmp_path, make_pm(configure=Configure()), scenario) as hive:
        await hive.broker.send("operator", "manager", "hi")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
        request = hive.rehearsal.requests[-1]
        system = " ".join(block["text"] for block in request.body["system"])
        assert "SECRET-WORD-FOR-manager" in system
        assert "You are manager, the manager of this hive" in system


async def test_a_tool_the_role_lacks_is_refused(make_pm, tmp_path):
    scenario = """
    [[agents.worker.rules]]
    steps = [{ tool = "list_agents", input = {} }, { text = "{{result}}" }]
    """
    async with running_hive(tmp_path, make_pm(), scenario, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "worker", "who is here?")
        with trio.fail_after(60):
            result = await next_event(hive, "worker", "tool_result")
    assert result.data["is_error"]
    assert "list_agents" in result.data["content"]


async def test_send_cannot_forge_its_sender(make_pm, tmp_path):
    scenario = """
    [[agents.worker.rules]]
    steps = [
      { tool = "send", input = { to = "operator", body = "forged", sender = "manager" } },
      { tool = "send", input = { to = "operator", body = "honest" } },
      { text = "done" },
    ]
    """
    async with running_hive(tmp_path, make_pm(), scenario, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "worker", "go")
        with trio.fail_after(60):
            forged = await next_event(hive, "worker", "tool_result")
            assert await operator_reply(hive, "worker") == "honest"
        assert [m.sender for m in await hive.broker.recent_for("operator", 10)] == ["worker"]
    assert forged.data["is_error"]
    assert "sender" in forged.data["content"]


class Stall:
    """A tool that hangs on its first call, so a test can kill Claude Code mid-turn."""

    def __init__(self):
        self.calls = 0
        self.entered = trio.Event()

    @hookimpl
    def register_tools(self, register):
        async def stall(ctx) -> str:
            """Wait."""
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                await trio.sleep_forever()
            return "ready"

        register(stall)


async def test_killing_claude_mid_turn_retries_without_losing_the_message(make_pm, tmp_path):
    scenario = """
    [[agents.manager.rules]]
    steps = [
      { tool = "stall", input = {} },
      { tool = "send", input = { to = "operator", body = "survived: {{prompt}}" } },
      { text = "done" },
    ]
    """
    stall = Stall()
    async with running_hive(tmp_path, make_pm(stall=stall), scenario) as hive:
        await hive.broker.send("operator", "manager", "precious")
        with trio.fail_after(60):
            await stall.entered.wait()
            os.kill(hive.harnesses["manager"].session.pid, signal.SIGKILL)
            assert "precious" in await operator_reply(hive, "manager")
            crash = await next_event(hive, "manager", "error", lambda e: "container crashed" in e.data["text"])
            retry = await next_event(
                hive, "manager", "error", lambda e: "restarting it with --resume" in e.data["text"]
            )
            end = await next_event(hive, "manager", "turn_end")
        assert "signal 9" in crash.data["text"]
        assert "exited" in retry.data["text"]
        assert end.data["exit"] == "ok"
        assert stall.calls == 2
        assert await hive.broker.inbox_depth("manager") == 0


async def test_model_api_errors_are_retried_with_backoff(make_pm, tmp_path):
    scenario = """
    [[agents.manager.rules]]
    steps = [{ status = 500, times = 2, tool = "send", input = { to = "operator", body = "finally" } }, { text = "ok" }]
    """
    async with running_hive(tmp_path, make_pm(), scenario, claude={"api_retries": 0}) as hive:
        await hive.broker.send("operator", "manager", "try")
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == "finally"
        errors = [e for e in await hive.events.history("manager") if e.type == "error"]
        assert len(errors) == 2
        assert all("retrying the turn" in e.data["text"] for e in errors)


async def test_context_overflow_compacts_and_retries_once(make_pm, tmp_path):
    scenario = """
    [[agents.manager.rules]]
    steps = [{ status = 400, tool = "send", input = { to = "operator", body = "fits now" } }, { text = "ok" }]
    """
    async with running_hive(tmp_path, make_pm(), scenario) as hive:
        await hive.broker.send("operator", "manager", "a lot")
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == "fits now"
            end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "compact-retry"
        states = [e.data["state"] for e in await hive.events.history("manager") if e.type == "state_change"]
        assert "compacting" in states


async def test_model_switch_takes_effect_on_the_next_turn(make_pm, tmp_path):
    scenario = '[[agents.manager.rules]]\nsteps = [{ text = "ok" }]\n'
    async with running_hive(tmp_path, make_pm(), scenario) as hive:
        await hive.broker.send("operator", "manager", "one")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
        assert hive.rehearsal.requests[-1].body["model"] == "claude-haiku-5-5"
        status = await hive.set_model("manager", "sonnet")
        assert status["model"] == "sonnet"
        assert status["switched_at"] is not None
        mark = hive.rehearsal.request_count
        await hive.broker.send("operator", "manager", "two")
        with trio.fail_after(60):
            request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "manager", after=mark)
        assert request.body["model"] == "claude-sonnet-5-5"


def test_render_batch_and_events_read_well():
    messages = (
        Message(7, "operator", "manager", "text", "hello", 0.0, "leased", 1, None),
        Message(
            8,
            "hive",
            "manager",
            "event",
            '{"event": "approval_resolved", "id": 3, "status": "denied"}',
            0.0,
            "leased",
            1,
            None,
        ),
    )
    text = render_batch(messages)
    assert text.startswith("2 new messages.")
    assert "--- message 7 from operator (text) ---\nhello" in text
    assert "--- message 8 from hive (event) ---\nhive event: approval_resolved\nid: 3\nstatus: denied" in text
    assert render_event("not json") == "not json"


def test_demo_scenario_understands_the_rendered_batch():
    """The demo's rules key on render_batch's layout; keep the two in step."""
    prompt = render_batch((Message(1, "operator", "manager", "text", "tidy up", 0.0, "leased", 1, None),))
    body = {"messages": [{"role": "user", "content": prompt}], "tools": [{"name": "mcp__hyperhive__send"}]}
    decision = Director(load_demo_scenario()).decide("manager", body)
    assert decision.rule == "delegate to worker"
    assert "The operator asks: tidy up" in str(decision.describe())


@pytest.mark.slow
async def test_five_crashes_in_a_minute_mark_the_agent_failed(make_pm, tmp_path):
    class Crasher:
        @hookimpl
        def before_recv(self, hive, agent):
            if agent == "worker":
                raise RuntimeError("boom")

    scenario = '[[agents.manager.rules]]\nsteps = [{ text = "noted" }]\n'
    async with running_hive(tmp_path, make_pm(crasher=Crasher()), scenario, agents={"worker": {}}) as hive:
        with trio.fail_after(60):
            await next_event(hive, "worker", "state_change", lambda e: e.data["failed"])
            event = await next_event(hive, "manager", "turn_start")
        assert hive.agents.get("worker").status.failed
        assert hive.agents.get("manager").status.failed is False
        inbox = await hive.broker.recent_for("manager", 5)
        assert '"event": "agent_failed"' in inbox[0].body
        assert "boom" in inbox[0].body
        assert event.data["message_ids"] == [inbox[0].id]


@pytest.mark.slow
async def test_resuming_a_failed_agent_starts_its_loop_again(make_pm, tmp_path):
    class Crasher:
        crashing = True

        @hookimpl
        def before_recv(self, hive, agent):
            if agent == "worker" and self.crashing:
                raise RuntimeError("boom")

    crasher = Crasher()
    scenario = '[[agents."*".rules]]\nsteps = [{ text = "back" }]\n'
    async with running_hive(tmp_path, make_pm(crasher=crasher), scenario, agents={"worker": {}}) as hive:
        with trio.fail_after(60):
            failed = await next_event(hive, "worker", "state_change", lambda e: e.data["failed"])
        message = await hive.broker.send("operator", "worker", "are you back?")
        crasher.crashing = False  # whatever broke is fixed
        await hive.resume("worker")
        assert hive.agents.get("worker").status.failed is False
        with trio.fail_after(60):
            start = await next_event(hive, "worker", "turn_start", after=failed.id)
            end = await next_event(hive, "worker", "turn_end", after=start.id)
        assert start.data["message_ids"] == [message.id]
        assert end.data["exit"] == "ok"


async def test_cancel_interrupts_the_turn_and_keeps_its_messages(make_pm, tmp_path):
    scenario = """
    [[agents.manager.rules]]
    when = "second"
    steps = [{ text = "both seen" }]

    [[agents.manager.rules]]
    steps = [{ tool = "stall", input = {} }, { text = "never" }]
    """
    stall = Stall()
    async with running_hive(tmp_path, make_pm(stall=stall), scenario) as hive:
        first = await hive.broker.send("operator", "manager", "first")
        with trio.fail_after(60):
            await stall.entered.wait()
            assert await hive.cancel("manager")
            end = await next_event(hive, "manager", "turn_end")
        assert end.data["exit"] == "interrupted"
        assert await hive.cancel("manager") is False  # nothing left to cancel
        assert hive.agents.get("manager").status.state.value == "idle"
        assert await hive.broker.inbox_depth("manager") == 1  # kept, not lost
        second = await hive.broker.send("operator", "manager", "second")
        with trio.fail_after(60):
            start = await next_event(hive, "manager", "turn_start", after=end.id)
            done = await next_event(hive, "manager", "turn_end", after=end.id)
        assert start.data["message_ids"] == [first.id, second.id]
        assert done.data["exit"] == "ok"


async def test_a_missing_cli_says_how_to_install_it(make_pm, tmp_path, monkeypatch):
    scenario = '[[agents.manager.rules]]\nsteps = [{ text = "ok" }]\n'
    missing = tmp_path / "no-claude"
    async with running_hive(tmp_path, make_pm(), scenario, claude={"cli": str(missing)}) as hive:
        await hive.broker.send("operator", "manager", "hi")
        with trio.fail_after(30):
            error = await next_event(hive, "manager", "error")
    assert error.data["text"] == (
        f"turn loop crashed: MissingCli: [claude] cli = {missing} is not an executable file; fix the path, or remove it"
    )
    monkeypatch.setattr(claude, "BUNDLED_CLI", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingCli, match="Run `make install`"):
        claude.find_cli(None)


async def test_a_denied_tool_is_a_permission_denied_event(make_pm, tmp_path):
    scenario = """
    [[agents.manager.rules]]
    steps = [{ tool = "Bash", input = { command = "rm -rf precious", description = "tidy" } }, { text = "ok" }]
    """
    async with running_hive(tmp_path, make_pm(), scenario, claude={"allowed_tools": ["Read"]}) as hive:
        precious = hive.paths.agent_state("manager") / "precious"
        precious.mkdir(parents=True)
        await hive.broker.send("operator", "manager", "tidy up")
        with trio.fail_after(60):
            denied = await next_event(hive, "manager", "permission_denied")
            await next_event(hive, "manager", "turn_end")
    assert denied.data["tool"] == "Bash"
    assert denied.data["reason"]
    assert precious.exists()


async def test_an_agent_cannot_widen_its_own_permissions(make_pm, tmp_path):
    """Settings files in Claude Code's config dir (/state/.claude) are the agent's to write, so they are not read."""
    scenario = """
    [[agents.manager.rules]]
    steps = [{ tool = "Bash", input = { command = "rm -rf precious", description = "tidy" } }, { text = "ok" }]
    """
    async with running_hive(tmp_path, make_pm(), scenario, claude={"allowed_tools": ["Read"]}) as hive:
        state = hive.paths.agent_state("manager")
        (state / "precious").mkdir(parents=True)
        (state / ".claude").mkdir(exist_ok=True)
        widen = '{"permissions": {"allow": ["Bash"], "defaultMode": "bypassPermissions"}}'
        (state / ".claude" / "settings.json").write_text(widen)
        (state / ".claude" / "settings.local.json").write_text(widen)
        await hive.broker.send("operator", "manager", "tidy up")
        with trio.fail_after(60):
            await next_event(hive, "manager", "permission_denied")
            await next_event(hive, "manager", "turn_end")
        assert (state / "precious").exists()
