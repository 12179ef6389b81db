"""Many agents on one host: leaky Claude Code processes are recycled, and a wake storm starts
a few sessions at a time while the daemon keeps answering. Real Claude Code CLI, rehearsal model."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import trio

from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.errors import ConfigError
from hyperhive_core.hive import Hive
from hyperhive_core.hostsock import request
from hyperhive_core.testing import needs_claude, next_event, running_hive

pytestmark = needs_claude

ECHO = r"""
[[agents."*".rules]]
when_regex = 'from operator \(text\) ---\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "{{agent}} heard: {{match.body}}" } }, { text = "done" }]
"""


async def reply(hive: Hive, agent: str, text: str) -> str:
    """The body of ``agent``'s first message to the operator that contains ``text``."""
    while True:
        for message in await hive.broker.recent_for("operator", 200):
            if message.sender == agent and text in message.body:
                return message.body
        await next_event(hive, agent, "message_sent", lambda event: event.data["to"] == "operator")


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


# -- recycling ---------------------------------------------------------------------------------


async def test_a_claude_code_over_recycle_rss_mb_is_restarted_between_turns_resuming_its_session(make_pm, tmp_path):
    # Claude Code alone holds well over 50 MiB: the manager's own cap recycles it after every turn.
    agents = {"manager": {"recycle_rss_mb": 50}, "worker": {}}
    async with running_hive(tmp_path, make_pm(), ECHO, agents=agents) as hive:
        manager = hive.harnesses["manager"]
        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "alpha")
            await reply(hive, "manager", "alpha")
            first_pid, session_id = manager.session.pid, manager.session.session_id
            note = await next_event(hive, "manager", "note", lambda e: e.data["text"].startswith("recycled: "))
            while manager.session.pid in (None, first_pid):  # restarted at once, not at the next turn
                await trio.sleep(0.05)
        text = note.data["text"]
        assert re.fullmatch(r"recycled: RSS \d+ MiB over recycle_rss_mb 50; restarting it with --resume", text), text
        rss = int(text.split()[2])
        assert rss > 50
        argv = argv_of(manager.session.pid)
        assert argv[argv.index("--resume") + 1] == session_id

        with trio.fail_after(60):
            await hive.broker.send("operator", "manager", "beta")
            await reply(hive, "manager", "beta")
        (resumed, *_) = [
            json.dumps(r.body["messages"])
            for r in hive.rehearsal.requests
            if r.agent == "manager" and "beta" in json.dumps(r.body["messages"])
        ]
        assert "manager heard: alpha" in resumed  # the conversation goes on

        # The worker keeps [claude] recycle_rss_mb, 1024 MiB: its Claude Code stays as it is.
        worker = hive.harnesses["worker"]
        with trio.fail_after(60):
            await hive.broker.send("operator", "worker", "gamma")
            await reply(hive, "worker", "gamma")
            pid = worker.session.pid
            end = await next_event(hive, "worker", "turn_end")
            await hive.broker.send("operator", "worker", "delta")
            await next_event(hive, "worker", "turn_end", after=end.id)
        assert worker.session.pid == pid
        assert not [e for e in await hive.events.history("worker") if e.data.get("text", "").startswith("recycled")]


def test_recycle_rss_mb_must_not_be_negative(make_pm, make_config):
    pm = make_pm()
    with pytest.raises(ConfigError, match=r"\[claude\] recycle_rss_mb must be 0 \(never\) or more, not -5"):
        make_config(pm, claude={"recycle_rss_mb": -5})
    with pytest.raises(ConfigError, match=r"recycle_rss_mb must be 0 \(never\) or a size in MiB, not -1"):
        check_agent_config(pm, "worker", AgentConfig(recycle_rss_mb=-1), "agent.toml")
    with pytest.raises(ConfigError, match=r"\[claude\] max_concurrent_starts must be 0 \(one per CPU core\) or more"):
        make_config(pm, claude={"max_concurrent_starts": -1})


# -- start-up storms ---------------------------------------------------------------------------------


class FirstOutput(trio.abc.ReceiveStream):
    """A process's stdout, noting when its first bytes were read."""

    def __init__(self, stream: trio.abc.ReceiveStream, seen: list[float]) -> None:
        self.stream = stream
        self.seen = seen

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        if data and not self.seen:
            self.seen.append(trio.current_time())
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


def record_starts(hive: Hive) -> list[tuple[float, list[float]]]:
    """Watch the backend start Claude Code: each start's exec time, and when its first output was read.

    The session holds its start slot from before the exec to after its first output, so
    these spans lie inside the slots' spans.
    """
    starts: list[tuple[float, list[float]]] = []
    exec_ = hive.backend.exec

    async def exec_watched(spec, argv, env, *, pty=False):
        began = trio.current_time()
        process = await exec_(spec, argv, env, pty=pty)
        if str(hive.claude_cli) in argv:
            seen: list[float] = []
            process.stdout = FirstOutput(process.stdout, seen)
            starts.append((began, seen))
        return process

    hive.backend.exec = exec_watched
    return starts


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same time
        running += step
        peak = max(peak, running)
    return peak


async def test_at_most_max_concurrent_starts_claude_codes_start_at_once(make_pm, tmp_path):
    agents = {f"agent-{index}": {} for index in range(6)}
    async with running_hive(tmp_path, make_pm(), ECHO, agents=agents, claude={"max_concurrent_starts": 2}) as hive:
        starts = record_starts(hive)
        with trio.fail_after(120):
            for name in agents:  # all woken together
                await hive.broker.send("operator", name, f"wake {name}")
            for name in agents:
                await reply(hive, name, f"wake {name}")
        assert len(starts) == len(agents)
        spans = [(began, seen[0]) for began, seen in starts]
        assert most_at_once(spans) == 2


async def test_the_host_socket_answers_throughout_a_wake_storm(make_pm, tmp_path):
    agents = {f"agent-{index}": {} for index in range(10)}
    latencies: list[float] = []
    stormed = trio.Event()

    async def poll(hive: Hive) -> None:
        while not stormed.is_set():
            started = time.monotonic()
            status = await trio.to_thread.run_sync(request, hive.paths.host_socket, "status")
            latencies.append(time.monotonic() - started)
            assert len(status["agents"]) == len(agents) + 1
            await trio.sleep(0.05)

    settings = {"max_concurrent_starts": 2}
    async with (
        running_hive(tmp_path, make_pm(), ECHO, agents=agents, claude=settings) as hive,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(poll, hive)
        with trio.fail_after(180):
            for name in agents:
                await hive.broker.send("operator", name, f"wake {name}")
            for name in agents:
                await reply(hive, name, f"wake {name}")
        stormed.set()
    assert len(latencies) >= 10  # it was asked all along
    assert max(latencies) < 5.0, f"the host socket took {max(latencies):.1f}s to answer during the storm"
