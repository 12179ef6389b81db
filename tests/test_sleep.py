"""Idle agents sleep: their Claude Code process and container stop, and the next message
resumes the same session. Real Claude Code CLI, rehearsal model, real sqlite; bwrap where noted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import hyperhive_nap
import hyperhive_questions
import pytest
import trio
from test_bwrap import needs_bwrap

from hyperhive_core import host_commands
from hyperhive_core.agents import State
from hyperhive_core.hive import Hive
from hyperhive_core.testing import needs_claude, next_event, running_hive

pytestmark = needs_claude

IDLE = 1.0
ECHO = r"""
[[agents.manager.rules]]
when_regex = 'from operator \(text\) ---\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "heard: {{match.body}}" } }, { text = "done" }]
"""
NAP = (
    r"""
[[agents.manager.rules]]
when = "nap please"
steps = [{ tool = "nap", input = { seconds = 8 } }, { text = "napping" }]
"""
    + ECHO
)
ASK = r"""
[[agents.manager.rules]]
when = "ask me"
steps = [
  { tool = "ask_operator", input = { question = "which colour?", options = ["mauve", "teal"] } },
  { text = "asked" },
]

[[agents.manager.rules]]
when_regex = 'answer: (?P<answer>\w+)'
steps = [{ tool = "send", input = { to = "operator", body = "thanks for {{match.answer}}" } }, { text = "done" }]
"""


async def reply(hive: Hive, text: str, after: int = 0) -> str:
    """The body of the manager's first message to the operator after message ``after`` that contains ``text``."""
    while True:
        for message in await hive.broker.recent_for("operator", 50):
            if message.sender == "manager" and message.id > after and text in message.body:
                return message.body
        await next_event(hive, "manager", "message_sent", lambda event: event.data["to"] == "operator")


async def fallen_asleep(hive: Hive, after: int = 0) -> int:
    """Wait until the manager shows ``asleep``; return the id of that state change."""
    event = await next_event(hive, "manager", "state_change", lambda e: e.data["state"] == "asleep", after=after)
    return event.id


def agent_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (an agent's socket directory, unique to the test)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def uid_processes(uid: int) -> list[int]:
    """Live processes running as ``uid``. A zombie is left out: it has ended and holds nothing
    but its pid, until the host's init reaps it (a sandbox's init outlived by its bwrap)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = dict(line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines())
            except OSError:
                continue
            if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith("Z"):
                found.append(int(entry.name))
    return found


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def requests_with(hive: Hive, text: str) -> list[str]:
    """The manager's model requests (their messages, as JSON) from the turn prompted with ``text`` on."""
    bodies = [json.dumps(r.body.get("messages", [])) for r in hive.rehearsal.requests if r.agent == "manager"]
    return [body for body in bodies if text in body]


async def test_an_idle_agent_sleeps_and_the_next_message_resumes_its_session(make_pm, tmp_path, hyperhive, clean_env):
    async with running_hive(tmp_path, make_pm(), ECHO, claude={"idle_release_seconds": IDLE}) as hive:
        harness = hive.harnesses["manager"]
        marker = str(hive.paths.agent_run("manager"))
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "alpha")
            assert await reply(hive, "alpha") == "heard: alpha"
            first_pid, session_id = harness.session.pid, harness.session.session_id
            assert agent_processes(marker)  # Claude Code and its MCP relay
            after = (await next_event(hive, "manager", "turn_end")).id
            await fallen_asleep(hive, after)
        assert harness.asleep
        assert not harness.session.running
        assert agent_processes(marker) == []  # the CLI, its relay, whatever it ran: all gone
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)
        notes = [e.data["text"] for e in await hive.events.history("manager") if e.type == "note"]
        assert f"idle for {IDLE:g}s: going to sleep" in notes

        # Asleep in /api/state's snapshot, the host socket's status, and `hyperhive status`.
        assert hive.agents.get("manager").snapshot()["state"] == "asleep"
        (shown,) = [a for a in (await host_commands.status(hive))["agents"] if a["name"] == "manager"]
        assert shown["state"] == "asleep"
        config = tmp_path / "hyperhive.toml"
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        cli = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [hyperhive, "-c", str(config), "status"], capture_output=True, text=True, env=clean_env
            )
        )
        assert cli.returncode == 0, cli.stderr
        assert any(line.startswith("manager ") and " asleep " in line for line in cli.stdout.splitlines())

        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "beta")
            assert await reply(hive, "beta") == "heard: beta"
            woke = await next_event(hive, "manager", "note", lambda e: e.data["text"] == "waking: resuming its session")
            await next_event(hive, "manager", "turn_end", after=woke.id)
        argv = argv_of(harness.session.pid)
        assert argv[argv.index("--resume") + 1] == session_id == harness.session.session_id
        resumed = requests_with(hive, "beta")[0]
        assert "heard: alpha" in resumed  # the conversation goes on where it stopped
        assert await hive.broker.inbox_depth("manager") == 0


@needs_bwrap
@pytest.mark.slow
async def test_in_bwrap_no_process_and_no_cgroup_is_left_while_asleep(make_pm, tmp_path):
    async with running_hive(
        tmp_path,
        make_pm(),
        ECHO,
        claude={"idle_release_seconds": IDLE},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 63100, "uid_range_size": 10},
    ) as hive:
        harness = hive.harnesses["manager"]
        uid = await hive.backend.uids.lookup("manager")
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "alpha")
            await reply(hive, "alpha")
            session_id = harness.session.session_id
            assert uid_processes(uid)
            cgroup = hive.backend.cgroups.get("manager") if hive.backend.cgroups else None
            after = (await next_event(hive, "manager", "turn_end")).id
            await fallen_asleep(hive, after)
        assert uid_processes(uid) == []
        if cgroup is not None:  # removed while asleep; made again on waking
            assert hive.backend.cgroups.get("manager") is None
            assert not any(directory.exists() for directory in cgroup.distinct_dirs)
        assert (await hive.backend.status(hive.container_spec("manager"))).state == "stopped"
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "beta")
            assert await reply(hive, "beta") == "heard: beta"
        assert harness.session.session_id == session_id
        assert "alpha" in requests_with(hive, "beta")[0]
        if cgroup is not None:
            assert hive.backend.cgroups.get("manager") is not None


# Sends that race the release: timed just before it is due, and just after it began.
BEFORE_MS = (50, 5)
AFTER_MS = (0, 1, 5, 20, 100, 300)
# Generous: the wake starts a CLI, on a machine other tests load too. Losing the wake-up means never.
NEXT_TURN_SECONDS = 30.0


async def send_while_falling_asleep(hive: Hive, rounds: int) -> None:
    """Each send either stops the release or wakes the agent after it: its turn always comes."""
    after = (await next_event(hive, "manager", "turn_end")).id
    sent = []
    for round_ in range(rounds):
        for kind, delay_ms in [*(("before", ms) for ms in BEFORE_MS), *(("after", ms) for ms in AFTER_MS)]:
            if kind == "before":  # the idle clock started as the last turn ended
                await trio.sleep(IDLE - delay_ms / 1000)
            else:
                with trio.fail_after(30):
                    await next_event(hive, "manager", "note", lambda e: e.data["text"].startswith("idle for"), after)
                await trio.sleep(delay_ms / 1000)
            body = f"race {round_}/{kind}/{delay_ms}"
            message = await hive.broker.send("operator", "manager", body)
            sent.append(message.id)
            with trio.fail_after(NEXT_TURN_SECONDS):
                start = await next_event(
                    hive, "manager", "turn_start", lambda e, id=message.id: id in e.data["message_ids"], after=after
                )
                assert await reply(hive, body, after=message.id) == f"heard: {body}"
                after = (await next_event(hive, "manager", "turn_end", after=start.id)).id
            assert hive.agents.get("manager").status.state in (State.IDLE, State.ASLEEP)
    handled = [m for m in await hive.broker.recent_for("operator", 500) if m.body.startswith("heard: race")]
    assert len(handled) == len(sent)  # each once: nothing lost, nothing twice
    assert await hive.broker.inbox_depth("manager") == 0


@pytest.mark.slow
async def test_a_message_sent_as_the_agent_falls_asleep_wakes_it(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO, claude={"idle_release_seconds": IDLE}) as hive:
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "first")
            await reply(hive, "first")
        await send_while_falling_asleep(hive, rounds=2)


@needs_bwrap
@pytest.mark.slow
async def test_in_bwrap_a_message_sent_as_the_agent_falls_asleep_wakes_it(make_pm, tmp_path):
    async with running_hive(
        tmp_path,
        make_pm(),
        ECHO,
        claude={"idle_release_seconds": IDLE},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 63110, "uid_range_size": 10},
    ) as hive:
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "first")
            await reply(hive, "first")
        await send_while_falling_asleep(hive, rounds=1)


async def test_a_paused_agent_sleeps_and_its_messages_wait_for_the_resume(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO, claude={"idle_release_seconds": IDLE}) as hive:
        harness = hive.harnesses["manager"]
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "alpha")
            await reply(hive, "alpha")
            session_id = harness.session.session_id
            await hive.pause("manager")
            mark = (await next_event(hive, "manager", "turn_end")).id
            await fallen_asleep(hive, mark)
        status = hive.agents.get("manager").status
        assert (status.state, status.paused) == (State.ASLEEP, True)
        held = await hive.broker.send("operator", "manager", "beta")
        await trio.sleep(2 * IDLE)
        assert not harness.session.running  # paused: the message does not wake it
        assert await hive.broker.inbox_depth("manager") == 1
        with trio.fail_after(60):
            await hive.resume("manager")
            assert await reply(hive, "beta", after=held.id) == "heard: beta"
        assert harness.session.session_id == session_id


@pytest.mark.slow
async def test_a_napping_agent_sleeps_through_its_nap_and_handles_what_queued_when_it_ends(make_pm, tmp_path):
    pm = make_pm(nap=hyperhive_nap)
    async with running_hive(tmp_path, pm, NAP, claude={"idle_release_seconds": IDLE}) as hive:
        harness = hive.harnesses["manager"]
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "nap please")
            napping = await next_event(hive, "manager", "state_change", lambda e: e.data["state"] == "napping")
            session_id = harness.session.session_id
            await next_event(hive, "manager", "note", lambda e: e.data["text"].startswith("idle for"), napping.id)
            while harness.session.running or not harness.asleep:  # the release finishes
                await trio.sleep(0.05)
        assert hive.agents.get("manager").status.state is State.NAPPING  # the nap still shows
        queued = await hive.broker.send("operator", "manager", "gamma")
        with trio.fail_after(60):
            assert await reply(hive, "gamma", after=queued.id) == "heard: gamma"  # at the nap's end
        notes = [e for e in await hive.events.history("manager") if e.type == "note"]
        (woke,) = [e for e in notes if e.data["text"] == "woke from a nap"]
        assert woke.id < (await next_event(hive, "manager", "turn_start", after=napping.id)).id
        assert harness.session.session_id == session_id


@pytest.mark.slow
async def test_cancel_ends_the_nap_of_an_asleep_agent_and_a_message_wakes_it(make_pm, tmp_path):
    pm = make_pm(nap=hyperhive_nap)
    async with running_hive(tmp_path, pm, NAP, claude={"idle_release_seconds": IDLE}) as hive:
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "nap please")
            napping = await next_event(hive, "manager", "state_change", lambda e: e.data["state"] == "napping")
            await next_event(hive, "manager", "note", lambda e: e.data["text"].startswith("idle for"), napping.id)
            await hive.cancel("manager")
            await fallen_asleep(hive, napping.id)  # the nap is over; nothing queued, so it stays asleep
            message = await hive.broker.send("operator", "manager", "delta")
            assert await reply(hive, "delta", after=message.id) == "heard: delta"


@pytest.mark.slow
async def test_an_answer_to_ask_operator_wakes_an_asleep_manager(make_pm, tmp_path):
    pm = make_pm(questions=hyperhive_questions)
    async with running_hive(tmp_path, pm, ASK, claude={"idle_release_seconds": IDLE}) as hive:
        harness = hive.harnesses["manager"]
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "ask me")
            asked = await next_event(hive, "manager", "turn_end")
            session_id = harness.session.session_id
            await fallen_asleep(hive, asked.id)
            questions = hive.stash[hyperhive_questions.QUESTIONS]
            (question,) = await questions.find()
            await questions.answer(question.id, "teal")
            assert await reply(hive, "thanks for teal") == "thanks for teal"
        assert harness.session.session_id == session_id
        assert "which colour?" in requests_with(hive, "answer: teal")[0]  # the question is in the resumed context


async def test_a_terminal_keeps_the_container_of_an_asleep_agent_up_and_the_agent_asleep(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO, claude={"idle_release_seconds": IDLE}) as hive:
        harness = hive.harnesses["manager"]
        with trio.fail_after(30):
            await fallen_asleep(hive)
        spec = hive.container_spec("manager")
        assert (await hive.backend.status(spec)).state == "stopped"
        with trio.fail_after(30):
            async with hive.container_in_use("manager"):
                shell = await hive.backend.exec(spec, ["sleep", str(4 * IDLE)], {})
                assert await shell.wait() == 0  # never stopped under it, though it outlived the idle time
                assert harness.asleep
                assert not harness.session.running
            while (await hive.backend.status(spec)).state != "stopped":  # unheld, the container goes again
                await trio.sleep(0.05)
        assert hive.agents.get("manager").status.state is State.ASLEEP
        releases = [e for e in await hive.events.history("manager") if e.data.get("text", "").startswith("idle for")]
        assert len(releases) == 1  # the agent was asleep all along: only its first release says so


def test_config_refuses_a_negative_idle_release_and_says_what_is_allowed(make_pm, make_config):
    from hyperhive_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[claude\] idle_release_seconds must be zero or more seconds, not -1"):
        make_config(make_pm(), claude={"idle_release_seconds": -1})
