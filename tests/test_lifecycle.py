"""Agents' lifecycle: spawn, destroy keeping state, restore, purge, rebuild, crashes, restarts."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.agents import UnknownAgent
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.names import InvalidName
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

pytestmark = needs_claude

ECHO = """
[[agents."*".rules]]
when_regex = '(?s)from operator \\(text\\) ---\\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "{{agent}} heard: {{match.body}}" } }, { text = "ok" }]
"""


async def test_spawn_destroy_restore_purge(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        await hive.spawn("scout")
        await hive.broker.send("operator", "scout", "ping")
        with trio.fail_after(60):
            assert await operator_reply(hive, "scout") == "scout heard: ping"
        notes = hive.paths.agent_state("scout") / "notes.md"
        notes.write_text("remember me")

        await hive.destroy("scout")
        assert "scout" not in hive.agents
        assert list(await hive.kept_state()) == ["scout"]
        with pytest.raises(HyperhiveError, match="has kept state"):
            await hive.spawn("scout")
        with pytest.raises(Exception, match="no agent named 'scout'"):
            await hive.broker.send("operator", "scout", "anyone?")

        await hive.restore("scout")
        assert notes.read_text() == "remember me"
        await hive.broker.send("operator", "scout", "back?")
        with trio.fail_after(60):
            await next_event(hive, "scout", "turn_end", lambda e: e.data["exit"] == "ok")

        await hive.destroy("scout", purge=True)
        assert not hive.paths.agent_dir("scout").exists()
        assert await hive.kept_state() == {}
        with pytest.raises(UnknownAgent):
            await hive.destroy("scout")


async def test_hook_on_agent_purged(make_pm, tmp_path):
    """Called for a purge only, once core forgot the agent; a failing plugin is reported and the purge stands."""
    purged = []

    class Remember:
        @hookimpl
        async def on_agent_purged(self, hive, agent):
            rows = await hive.store.read(
                lambda db: [
                    db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", [agent]).fetchone()[0]
                    for table, column in (("agents", "name"), ("turns", "agent"))
                ]
            )
            purged.append((agent, rows, agent in hive.agents, hive.paths.agent_dir(agent).exists()))

    class Broken:
        @hookimpl
        def on_agent_purged(self, hive, agent):
            raise RuntimeError("cannot forget")

    async with running_hive(tmp_path, make_pm(remember=Remember(), broken=Broken()), ECHO) as hive:
        await hive.spawn("scout")
        await hive.broker.send("operator", "scout", "ping")
        with trio.fail_after(60):
            await next_event(hive, "scout", "turn_end")
        await hive.destroy("scout")
        assert purged == []  # kept state: restore brings it back whole
        await hive.destroy("scout", purge=True)
        assert purged == [("scout", [0, 0], False, False)]
        with trio.fail_after(10):
            error = await next_event(hive, "hive", "error", lambda e: e.data.get("where") == "on_agent_purged")
        assert (error.data["plugin"], error.data["agent"]) == ("broken", "scout")
        assert error.data["error"] == "RuntimeError('cannot forget')"
        assert await hive.kept_state() == {}


@pytest.mark.parametrize("name", ["..", "a/b", "bad\x00name", "Upper", "-dash", "x" * 40, "operator", "hive", ""])
async def test_bad_names_are_refused_before_touching_the_disk(make_pm, tmp_path, name):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "run" not in p.parts)
        for action in (hive.spawn, hive.destroy, hive.restore):
            with pytest.raises((InvalidName, HyperhiveError)):
                await action(name)
        with pytest.raises(InvalidName):
            await hive.destroy(name, purge=True)
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "run" not in p.parts)
        assert before == after


async def test_the_manager_cannot_be_destroyed(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        with pytest.raises(HyperhiveError, match="the hive always has one"):
            await hive.destroy("manager", purge=True)
        assert "manager" in hive.agents


async def test_purge_refuses_paths_outside_the_state_root(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        await hive.spawn("scout")
        await hive.destroy("scout")
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep.txt").write_text("precious")
        agent_dir = hive.paths.agent_dir("scout")
        for child in agent_dir.iterdir():
            child.rename(tmp_path / f"moved-{child.name}")
        agent_dir.rmdir()
        agent_dir.symlink_to(outside)  # an agent dir swapped for a link out of the root
        with pytest.raises(ValueError, match="outside the state root"):
            await hive.destroy("scout", purge=True)
        assert (outside / "keep.txt").read_text() == "precious"


async def test_spawned_agents_come_back_after_a_restart(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO, agents={"declared": {}}) as hive:
        await hive.spawn("scout")
        await hive.spawn("ranger")
        await hive.destroy("ranger")
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:  # "declared" left the config
        assert sorted(agent.name for agent in hive.agents) == ["manager", "scout"]
        assert sorted(await hive.kept_state()) == ["declared", "ranger"]
        await hive.broker.send("operator", "scout", "still there?")
        with trio.fail_after(60):
            assert await operator_reply(hive, "scout") == "scout heard: still there?"


async def test_rebuild_restarts_with_the_current_config_and_clears_failed(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        await hive.broker.send("operator", "manager", "one")
        with trio.fail_after(60):
            await operator_reply(hive, "manager")
        old_pid = hive.harnesses["manager"].session.pid
        hive.agents.get("manager").status.failed = True
        await hive.rebuild("manager")
        assert not hive.agents.get("manager").status.failed
        assert hive.harnesses["manager"].session.pid is None  # fresh; starts on the next message
        await hive.broker.send("operator", "manager", "two")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end", lambda e: True)
            while hive.harnesses["manager"].session.pid in (None, old_pid):
                await trio.sleep(0.05)


async def test_the_last_turn_and_model_switch_outlive_a_rebuild_and_a_restart(make_pm, tmp_path):
    """The dashboard's last-turn chip and "switched … ago" come from GET /api/state, which keeps them."""
    import hyperhive_web

    async def shown(hive):
        dashboard = hyperhive_web.dashboard_of(hive)
        request = urllib.request.Request(
            f"{dashboard.url}/api/state", headers={"Authorization": f"Bearer {dashboard.token}"}
        )
        with trio.fail_after(30):
            body = await trio.to_thread.run_sync(lambda: json.load(urllib.request.urlopen(request, timeout=20)))
        (manager,) = [agent for agent in body["agents"] if agent["name"] == "manager"]
        return {key: manager[key] for key in ("last_turn_ms", "last_turn_at", "model", "model_switched_at")}

    async with running_hive(tmp_path, make_pm("web"), ECHO, web={"port": 0}) as hive:
        assert await shown(hive) == {
            "last_turn_ms": None,
            "last_turn_at": None,
            "model": "haiku",
            "model_switched_at": None,
        }
        await hive.broker.send("operator", "manager", "one")
        with trio.fail_after(60):
            end = await next_event(hive, "manager", "turn_end")
        await hive.set_model("manager", "sonnet")
        before = await shown(hive)
        assert before["last_turn_ms"] == end.data["duration_ms"]
        assert before["last_turn_at"] == pytest.approx(end.at, abs=1)
        assert before["model"] == "sonnet"
        assert before["model_switched_at"] is not None
        await hive.rebuild("manager")
        rebuilt = await shown(hive)
    async with running_hive(tmp_path, make_pm("web"), ECHO, web={"port": 0}) as hive:
        restarted = await shown(hive)
    for after in (rebuilt, restarted):
        assert after == {**before, "last_turn_at": pytest.approx(before["last_turn_at"], abs=1)}


async def test_hook_on_container_event_for_a_crash_and_restart_with_backoff(make_pm, tmp_path, caplog):
    events = []

    class Watch:
        @hookimpl
        def on_container_event(self, hive, event):
            events.append(event)

    async with running_hive(tmp_path, make_pm(watch=Watch()), ECHO) as hive:
        await hive.broker.send("operator", "manager", "wake up")
        with trio.fail_after(60):
            await operator_reply(hive, "manager")
            await next_event(hive, "manager", "turn_end")
        session = hive.harnesses["manager"].session
        victim = session.pid
        os.kill(victim, signal.SIGKILL)  # from outside, between turns
        with trio.fail_after(30):
            error = await next_event(hive, "manager", "error", lambda e: "container crashed" in e.data["text"])
            while session.pid in (None, victim):
                await trio.sleep(0.05)
        assert [(e.agent, e.kind.value) for e in events] == [("manager", "crashed")]
        assert events[0].detail == "killed by signal 9 (SIGKILL)"
        assert "signal 9" in error.data["text"]
        # One line in the daemon's log too: the agent, how it died, where its output is.
        (logged,) = [r for r in caplog.records if r.name == "hyperhive_core.hive" and "crashed" in r.getMessage()]
        assert logged.levelname == "WARNING"
        assert logged.getMessage() == (
            "agent manager: container crashed: killed by signal 9 (SIGKILL); its last output is in its live tail "
            "(the dashboard's agent page, or `hyperhive events manager --after 0`)"
        )
        await hive.broker.send("operator", "manager", "still alive?")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end", lambda e: True, after=error.id)


async def test_a_paused_idle_agent_takes_no_turn_until_resumed(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), ECHO) as hive:
        await hive.pause("manager")
        await hive.broker.send("operator", "manager", "are you there?")
        with trio.move_on_after(3):
            await next_event(hive, "manager", "turn_start")
            pytest.fail("a paused agent started a turn")
        await hive.resume("manager")
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == "manager heard: are you there?"
