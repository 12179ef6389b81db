"""crashwatch in a running hive: crashes from bwrap, from D-Bus and from bursts reach the manager once."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import hyperhive_crashwatch
import hyperhive_web
import pytest
import trio
from hyperhive_crashwatch import CRASHWATCH
from hyperhive_crashwatch.bursts import LINE_CHARS
from hyperhive_crashwatch.records import TABLE
from hyperhive_web import dashboard_of
from test_bwrap import needs_bwrap

from hyperhive_core import ConfigError, ContainerEvent, ContainerEventKind, Hive, hookimpl
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

SCENARIO = """
[[agents.manager.rules]]
when = "hive event: container_crash"
steps = [{ text = "noted" }]

[[agents."*".rules]]
when_regex = '(?s)from operator \\(text\\) ---\\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "{{agent}} heard: {{match.body}}" } }, { text = "ok" }]
"""
WINDOW = 60.0
CRASHED = ContainerEventKind.CRASHED


def crash(agent: str, detail: str = "Claude Code exited with status 1", log: tuple[str, ...] = ()) -> ContainerEvent:
    return ContainerEvent(agent, CRASHED, detail, log)


async def reports(hive: Hive) -> list[dict[str, Any]]:
    """The ``container_crash`` events in the manager's inbox, oldest first."""
    messages = reversed(await hive.broker.recent_for(hive.agents.manager, 500))
    bodies = [json.loads(message.body) for message in messages if message.kind == "event"]
    return [body for body in bodies if body["event"] == "container_crash"]


async def wait_for_reports(hive: Hive, count: int) -> list[dict[str, Any]]:
    """Wait until the manager has ``count`` crash reports; return them all."""
    async with hive.events.subscribe("hive") as events:  # before looking, so none slips by
        while len(found := await reports(hive)) < count:
            await anext(events)
        return found


async def bursts(hive: Hive) -> list[dict[str, Any]]:
    return await hive.store.read(lambda db: list(db[TABLE].rows_where(order_by="id")))


async def wait_for_burst(hive: Hive, agent: str, **values: Any) -> None:
    """Wait until crashwatch has stored a burst of ``agent`` with these values."""
    while not [row for row in await bursts(hive) if row["agent"] == agent and values.items() <= row.items()]:
        await trio.sleep(0.01)


class ParkManager:
    """Parks the manager's loop before it reads its inbox: the reports wait there, and no Claude Code starts."""

    @hookimpl
    async def before_recv(self, hive, agent):
        if agent == hive.agents.manager:
            await trio.sleep_forever()


def plugins(make_pm, *, park_manager: bool = True, web: bool = False):
    extra = {"park_manager": ParkManager()} if park_manager else {}
    return make_pm(crashwatch=hyperhive_crashwatch, **extra, **({"web": hyperhive_web} if web else {}))


# -- the crash sources ------------------------------------------------------------


def sandboxed_claude(sandbox: int) -> int:
    """The Claude Code process inside a bwrap sandbox, seen from the host: bwrap → its init → claude."""

    def children(pid: int) -> list[int]:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    (init,) = children(sandbox)
    (claude,) = children(init)
    assert b"claude" in Path(f"/proc/{claude}/cmdline").read_bytes().split(b"\0")[0]
    return claude


@pytest.mark.slow
@needs_claude
@needs_bwrap
async def test_a_bwrap_agent_killed_from_outside_is_reported_to_the_manager_once(make_pm, tmp_path):
    async with running_hive(
        tmp_path,
        plugins(make_pm, park_manager=False),
        SCENARIO,
        agents={"scout": {}},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 62400, "uid_range_size": 10},
    ) as hive:
        await hive.broker.send("operator", "scout", "ping")
        with trio.fail_after(60):
            assert await operator_reply(hive, "scout") == "scout heard: ping"
            await next_event(hive, "scout", "turn_end")
        session = hive.harnesses["scout"].session
        sandbox = session.pid

        os.kill(sandboxed_claude(sandbox), signal.SIGKILL)  # as the host would
        with trio.fail_after(2):
            (report,) = await wait_for_reports(hive, 1)
        assert report["agent"] == "scout"
        assert report["status"] == "Claude Code exited with status 137: killed by signal 9 (SIGKILL)"
        assert (report["count"], report["burst"]) == (1, "ongoing")
        mark = await next_event(hive, "scout", "crashwatch.crash")
        assert mark.data["count"] == 1

        with trio.fail_after(60):
            # The report wakes the manager, and the daemon restarts the session.
            message = (await hive.broker.recent_for("manager", 1))[0]
            await next_event(hive, "manager", "turn_start", lambda e: message.id in e.data["message_ids"])
            while session.pid in (None, sandbox):
                await trio.sleep(0.05)
        assert len(await reports(hive)) == 1
        assert [(row["agent"], row["count"], row["reported"]) for row in await bursts(hive)] == [("scout", 1, 1)]


async def test_a_unit_failing_twice_in_a_burst_is_reported_once(make_pm, tmp_path):
    """The nspawn backend's crashes, as core's D-Bus watcher reports them (tests/test_dbus_watch.py
    runs the watcher on a real bus): a unit that fails, is restarted and fails again is one burst."""
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"alice": {}}) as hive:
        await hive.container_event(crash("alice", "unit failed (failed), result exit-code"))
        with trio.fail_after(2):
            (report,) = await wait_for_reports(hive, 1)
        assert (report["agent"], report["status"], report["count"]) == (
            "alice",
            "unit failed (failed), result exit-code",
            1,
        )
        await hive.container_event(ContainerEvent("alice", ContainerEventKind.STARTED, "unit active (running)"))
        await hive.container_event(crash("alice", "unit failed (failed), result core-dump"))
        with trio.fail_after(2):
            await wait_for_burst(hive, "alice", count=2, detail="unit failed (failed), result core-dump")
        assert len(await reports(hive)) == 1


async def test_a_purged_agent_leaves_no_crashes_behind(make_pm, tmp_path):
    """Its bursts go from the table (and so from the panels) and from memory; the others' stay."""
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"alice": {}}) as hive:
        await hive.spawn("bob")
        for agent in ("alice", "bob"):
            await hive.container_event(crash(agent))
        with trio.fail_after(10):
            await wait_for_burst(hive, "alice", count=1)
            await wait_for_burst(hive, "bob", count=1)
        assert hive.stash[CRASHWATCH].in_burst("bob")
        await hive.destroy("bob", purge=True)
        assert [row["agent"] for row in await bursts(hive)] == ["alice"]
        assert not hive.stash[CRASHWATCH].in_burst("bob")


async def test_a_burst_of_20_crashes_is_one_report_then_one_follow_up_with_the_count(make_pm, tmp_path, mock_clock):
    # Real time, but the test moves the clock past a burst itself. Autojump would jump while
    # the store's threads write, ending bursts early; held, it would stall the polls below.
    mock_clock.rate = 1
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"scout": {}}) as hive:
        await hive.container_event(crash("scout", "Claude Code exited with status 1"))
        with trio.fail_after(2):
            (first,) = await wait_for_reports(hive, 1)
        assert (first["agent"], first["count"], first["burst"]) == ("scout", 1, "ongoing")

        for number in range(2, 21):
            await hive.container_event(crash("scout", f"Claude Code exited with status {number}"))
        with trio.fail_after(2):
            await wait_for_burst(hive, "scout", count=20)
        mock_clock.jump(WINDOW / 2)
        await trio.sleep(0.1)
        assert len(await reports(hive)) == 1  # the restart loop does not flood the inbox

        mock_clock.jump(WINDOW)  # no crash for a whole window: the burst is over
        with trio.fail_after(2):
            _, follow_up = await wait_for_reports(hive, 2)
        assert (follow_up["count"], follow_up["burst"]) == (20, "over")
        assert follow_up["status"] == "Claude Code exited with status 20"
        assert follow_up["first_at"] == first["first_at"]
        ended = await next_event(hive, "scout", "crashwatch.burst_ended")
        assert ended.data["count"] == 20

        mock_clock.jump(WINDOW * 10)
        await trio.sleep(0.1)
        assert len(await reports(hive)) == 2
        assert [(row["count"], row["reported"]) for row in await bursts(hive)] == [(20, 20)]


async def test_crashes_further_apart_than_the_window_are_separate_bursts(make_pm, tmp_path, mock_clock):
    mock_clock.rate = 1
    async with running_hive(
        tmp_path, plugins(make_pm), SCENARIO, agents={"scout": {}}, crashwatch={"history_per_agent": 2}
    ) as hive:
        for number in range(1, 4):
            await hive.container_event(crash("scout"))
            with trio.fail_after(2):
                found = await wait_for_reports(hive, number)
            mock_clock.jump(WINDOW + 1)
        # One crash each: nothing to follow up.
        assert [(report["count"], report["burst"]) for report in found] == [(1, "ongoing")] * 3
        assert [row["count"] for row in await bursts(hive)] == [1, 1]  # history_per_agent


async def test_the_managers_own_crash_waits_in_its_inbox(make_pm, tmp_path):
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO) as hive:  # parked: as good as down
        await hive.container_event(crash("manager", "killed by signal 9"))
        with trio.fail_after(2):
            (report,) = await wait_for_reports(hive, 1)
        assert (report["agent"], report["status"]) == ("manager", "killed by signal 9")
        assert await hive.broker.inbox_depth("manager") == 1


async def test_starts_and_stops_are_not_crashes(make_pm, tmp_path):
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"scout": {}}) as hive:
        for kind in (ContainerEventKind.STARTED, ContainerEventKind.STOPPED):
            await hive.container_event(ContainerEvent("scout", kind, "unit active (running), result success"))
        await hive.container_event(crash("scout"))
        with trio.fail_after(2):
            await wait_for_reports(hive, 1)
        assert [row["count"] for row in await bursts(hive)] == [1]


async def test_the_log_is_bounded(make_pm, tmp_path):
    log = (*(f"line {number}" for number in range(10)), "x" * 2000)
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, crashwatch={"log_lines": 3}) as hive:
        await hive.container_event(crash("manager", log=log))
        with trio.fail_after(2):
            (report,) = await wait_for_reports(hive, 1)
    assert report["log"] == ["line 8", "line 9", "x" * LINE_CHARS + "…"]


async def test_a_burst_open_at_shutdown_is_followed_up_after_a_restart(make_pm, tmp_path, mock_clock):
    mock_clock.rate = 1
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"scout": {}}) as hive:
        await hive.container_event(crash("scout"))
        with trio.fail_after(2):
            await wait_for_burst(hive, "scout", count=1, reported=1)
        for _ in range(2):
            await hive.container_event(crash("scout"))
        # Shut down at once: what the service did not store yet is stored on the way out.
    async with running_hive(tmp_path, plugins(make_pm), SCENARIO, agents={"scout": {}}) as hive:
        assert [(row["count"], row["reported"]) for row in await bursts(hive)] == [(3, 1)]
        assert hive.stash[CRASHWATCH].in_burst("scout")
        mock_clock.jump(WINDOW)
        with trio.fail_after(2):
            _, follow_up = await wait_for_reports(hive, 2)
        assert (follow_up["count"], follow_up["burst"]) == (3, "over")
        assert not hive.stash[CRASHWATCH].in_burst("scout")


# -- the dashboard ----------------------------------------------------------------------


def get(url: str, token: str) -> str:
    """A GET as a script sends it: the operator token as a bearer token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


async def fetch(hive: Hive, path: str) -> str:
    dashboard = dashboard_of(hive)
    return await trio.to_thread.run_sync(get, f"{dashboard.url}{path}", dashboard.token)


async def panel(hive: Hive, agent: str | None = None) -> dict[str, Any]:
    """The crash panel as the dashboard renders it, on the host page or on ``agent``'s."""
    path = "/-/web/panels/crashwatch" if agent is None else f"/-/web/agents/{agent}/panels/crashwatch-agent"
    return json.loads(await fetch(hive, path))


HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


async def test_panels_list_recent_crashes_on_top_while_an_agent_is_crashing(make_pm, tmp_path, mock_clock):
    mock_clock.rate = 1
    pm = plugins(make_pm, web=True)
    async with running_hive(tmp_path, pm, SCENARIO, agents={"scout": {}}, web={"port": 0}) as hive:
        empty = await panel(hive)
        assert "no container crashes recorded" in empty["html"]
        script = re.search(r'src="(/-/web/assets/crashwatch/\w+/crashwatch\.js)"', await fetch(hive, "/"))
        assert script, "the host page loads the panel's script"
        assert "crashwatch.crash" in await fetch(hive, script.group(1))
        # What a crash reports comes from the agent's process: its exit status and its last log lines.
        await hive.container_event(crash("scout", f"killed by signal 9 {HOSTILE}", (HOSTILE,)))
        with trio.fail_after(2):
            await wait_for_reports(hive, 1)

        shown = await panel(hive)
        html = shown["html"]
        assert shown["placement"] == "top"
        assert 'aria-label="container crashes"' in html
        assert "◆ CR4SH W4TCH ◆" in html
        assert '<a href="/agent/scout/">scout</a>' in html
        assert "crashing now" in html
        assert f"<td>killed by signal 9 {ESCAPED}</td>" in html
        assert f"<pre>{ESCAPED}</pre>" in html
        assert HOSTILE not in html

        own = await panel(hive, "scout")
        assert 'aria-label="container crashes of scout"' in own["html"]
        assert "/agent/" not in own["html"]  # its own page: no agent column
        assert '<td>1 <span class="crashwatch-looping">crashing now</span></td>' in own["html"]
        none = await panel(hive, "manager")
        assert "no container crashes recorded" in none["html"]

        mock_clock.jump(WINDOW)
        with trio.fail_after(2):
            await next_event(hive, "scout", "crashwatch.burst_ended")
        shown = await panel(hive)
        assert shown["placement"] == "main"
        assert "crashing now" not in shown["html"]


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"burst_seconds": 0}, r"hyperhive\.toml: \[crashwatch\] burst_seconds must be positive, not 0(\.0)?$"),
        ({"burst_seconds": "soon"}, r"crashwatch.burst_seconds must be a number, not a string \('soon'\)"),
        ({"log_lines": -1}, r"hyperhive\.toml: \[crashwatch\] log_lines must be 0 or more, not -1$"),
        ({"history_per_agent": 0}, r"hyperhive\.toml: \[crashwatch\] history_per_agent must be at least 1, not 0$"),
        ({"burst_second": 5}, r"unknown key crashwatch.burst_second"),
    ],
)
def test_bad_config_is_refused_naming_the_key(make_pm, make_config, values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(plugins(make_pm), crashwatch=values)
