"""The contract JSON API (docs/architecture.md §9) on a real hive: every route, and bad input answered clearly."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json

import pytest
import trio
from hyperhive_web import dashboard_of
from hyperhive_web.api import large_json
from quart import jsonify
from webkit import dashboard_hive, operator

from hyperhive_core import AgentConfig, State
from hyperhive_core.testing import needs_claude, next_event, operator_reply

pytestmark = needs_claude


async def test_state_lists_the_hive_its_agents_and_the_dashboard_port(hive):
    with trio.fail_after(10):
        reply = await operator(hive).get("/api/state")
    assert reply.status == 200
    state = reply.json()
    assert state["dashboard_port"] == dashboard_of(hive).port
    limits = "no limits: the process backend applies none"
    assert state["backend"] == {"name": "process", "isolated": False, "limits": limits}
    assert state["rehearsal"] == hive.rehearsal.url
    assert state["manager"] == "manager"
    names = [agent["name"] for agent in state["agents"]]
    assert names == ["manager", "worker"]
    worker = state["agents"][1]
    assert worker["state"] == "idle"
    assert worker["inbox_depth"] == 0
    assert worker["last_turn_ms"] is None


async def test_agent_state_and_an_unknown_agent(hive):
    http = operator(hive)
    with trio.fail_after(10):
        worker = (await http.get("/api/agents/worker/state")).json()
        missing = await http.get("/api/agents/nobody/state")
    assert worker["name"] == "worker"
    assert worker["model"] == "haiku"
    assert missing.status == 404
    assert "no agent named 'nobody'" in missing.json()["error"]


@pytest.mark.slow
async def test_a_message_reaches_the_agent_and_its_answer_the_operator_inbox(hive):
    http = operator(hive)
    with trio.fail_after(60):
        sent = await http.post("/api/agents/worker/messages", {"body": "ping"})
        assert sent.status == 200, sent.body
        assert sent.json()["to"] == "worker"
        assert await operator_reply(hive, "worker") == "pong: ping"
        inbox = (await http.get("/api/agents/worker/inbox")).json()
        operator_inbox = (await http.get("/api/inbox?limit=5")).json()
        await next_event(hive, "worker", "turn_end")
        worker = (await http.get("/api/agents/worker/state")).json()
    assert [(m["from"], m["body"]) for m in inbox] == [("operator", "ping")]
    assert operator_inbox[0]["from"] == "worker"
    assert operator_inbox[0]["body"] == "pong: ping"
    assert worker["last_turn_ms"] > 0


async def test_bad_input_gets_a_clear_error(hive):
    http = operator(hive)
    with trio.fail_after(10):
        empty = await http.post("/api/agents/worker/messages", {"body": "  "})
        not_json = await http.request("POST", "/api/agents/worker/messages", body=b"hello")
        wrong_type = await http.post("/api/agents/worker/destroy", {"purge": "yes"})
        bad_limit = await http.get("/api/inbox?limit=many")
        bad_name = await http.post("/api/spawn", {"name": "Bad Name"})
        bad_model = await http.post("/api/agents/worker/model", {"model": "two words"})
    assert (empty.status, empty.json()["error"]) == (400, "give 'body': it is missing or empty")
    assert not_json.status == 400
    assert "JSON object" in not_json.json()["error"]
    assert wrong_type.json()["error"] == "'purge' must be true or false, not 'yes'"
    assert bad_limit.json()["error"] == "?limit= must be a whole number, not 'many'"
    assert bad_name.status == 400
    assert "invalid agent name" in bad_name.json()["error"]
    assert "model name 'two words' is not valid" in bad_model.json()["error"]


async def test_model_switches_at_once_when_idle(hive):
    http = operator(hive)
    with trio.fail_after(10):
        result = (await http.post("/api/agents/worker/model", {"model": "sonnet"})).json()
        worker = (await http.get("/api/agents/worker/state")).json()
    assert result["model"] == "sonnet"
    assert result["queued"] is None
    assert worker["model"] == "sonnet"
    assert worker["model_switched_at"] is not None


@pytest.mark.slow
async def test_model_is_queued_during_a_turn_and_cancel_interrupts_it(hive):
    http = operator(hive)
    with trio.fail_after(60):
        await http.post("/api/agents/worker/messages", {"body": "slow"})
        await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == State.THINKING)
        await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker" and r.rule == "slow")
        queued = (await http.post("/api/agents/worker/model", {"model": "opus"})).json()
        cancelled = (await http.post("/api/agents/worker/cancel")).json()
        end = await next_event(hive, "worker", "turn_end")
        worker = (await http.get("/api/agents/worker/state")).json()
    assert queued == {"model": "haiku", "queued": "opus", "switched_at": None}
    assert cancelled == {"cancelled": True}
    assert end.data["exit"] == "interrupted"
    assert worker["model"] == "opus"
    assert worker["queued_model"] is None


async def test_spawn_destroy_keeping_state_restore_and_purge(hive):
    http = operator(hive)
    with trio.fail_after(30):
        spawned = await http.post("/api/spawn", {"name": "scout"})
        assert spawned.status == 200, spawned.body
        assert spawned.json()["name"] == "scout"
        destroyed = (await http.post("/api/agents/scout/destroy", {"purge": False})).json()
        kept = (await http.get("/-/web/kept")).json()
        restored = await http.post("/-/web/agents/scout/restore")
        again = await http.post("/api/agents/scout/destroy", {"purge": True})
        kept_after = (await http.get("/-/web/kept")).json()
        state = (await http.get("/api/state")).json()
    assert destroyed == {"agent": "scout", "purged": False}
    assert [row["name"] for row in kept] == ["scout"]
    assert restored.status == 200
    assert again.json() == {"agent": "scout", "purged": True}
    assert kept_after == []
    assert "scout" not in [agent["name"] for agent in state["agents"]]


async def test_rebuild(hive):
    with trio.fail_after(20):
        reply = await operator(hive).post("/api/agents/worker/rebuild")
    assert reply.status == 200
    assert reply.json()["name"] == "worker"


async def test_the_manager_cannot_be_destroyed(hive):
    with trio.fail_after(10):
        reply = await operator(hive).post("/api/agents/manager/destroy", {"purge": False})
    assert reply.status == 400
    assert "is the manager" in reply.json()["error"]


NAP_SCENARIO = """
[[agents.worker.rules]]
when = "take a nap"
steps = [{ tool = "nap", input = { seconds = 600 } }, { text = "napping" }]

[[agents."*".rules]]
steps = [{ text = "awake" }]
"""


@pytest.mark.slow
async def test_slash_cancel_ends_a_nap(tmp_path, make_pm):
    import hyperhive_nap
    import hyperhive_web

    pm = make_pm(web=hyperhive_web, nap=hyperhive_nap)
    async with dashboard_hive(tmp_path, pm, NAP_SCENARIO) as hive:
        http = operator(hive)
        with trio.fail_after(60):
            await http.post("/api/agents/worker/messages", {"body": "take a nap"})
            asleep = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == State.NAPPING)
            napping = (await http.get("/api/agents/worker/state")).json()
            cancelled = (await http.post("/-/web/agents/worker/slash", {"line": "/cancel"})).json()
            await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == State.IDLE, after=asleep.id)
            idle = (await http.get("/api/agents/worker/state")).json()
    assert napping["state"] == "napping"
    assert napping["detail"].endswith("Z")  # the wake time, ISO 8601 UTC: the badge counts down to it
    assert cancelled == {"command": "cancel", "text": "nap over: worker wakes now"}
    assert idle["state"] == "idle"


# hypercorn leaves the socket it failed to bind to the garbage collector; collected here.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning")
async def test_a_port_in_use_is_reported_clearly_and_the_hive_still_runs(tmp_path, web_pm, caplog):
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with dashboard_hive(tmp_path, web_pm, web={"port": port}) as hive:
            assert dashboard_of(hive).port is None
            assert "worker" in hive.agents
    logged = caplog.text
    caplog.clear()  # the records' tracebacks hold the socket
    gc.collect()
    assert f"the dashboard cannot listen on 127.0.0.1:{port}: Address already in use" in logged
    assert "set [web] port to a free port" in logged


async def test_an_idempotency_key_makes_a_retried_send_store_one_message(hive):
    http = operator(hive)
    key = {"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
    with trio.fail_after(10):
        first = await http.post("/api/agents/manager/messages", {"body": "once"}, headers=key)
        retried = await http.post("/api/agents/manager/messages", {"body": "once"}, headers=key)
        # The header may also come as a quoted structured-field string.
        quoted = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}
        quoted_retry = await http.post("/api/agents/manager/messages", {"body": "once"}, headers=quoted)
        other_body = await http.post("/api/agents/manager/messages", {"body": "twice?"}, headers=key)
        bad_key = await http.post("/api/agents/manager/messages", {"body": "x"}, headers={"Idempotency-Key": "a b"})
    assert first.status == 200, first.body
    assert retried.json() == quoted_retry.json() == first.json()
    assert other_body.status == 400
    assert other_body.json()["error"].startswith(
        f"idempotency key '8e03978e-40d5-43e8-bc93-6894a57f9324' was already used by 'operator' "
        f"for message {first.json()['id']} to 'manager' with a different body; nothing was stored."
    )
    assert bad_key.status == 400
    assert "idempotency key must be 1-128 characters" in bad_key.json()["error"]
    assert [m.body for m in await hive.broker.recent_from("operator")] == ["once"]


async def test_pause_and_resume_and_the_action_routes_take_only_their_own_names(hive):
    http = operator(hive)
    with trio.fail_after(20):
        paused = await http.post("/-/web/agents/worker/pause")
        state = (await http.get("/api/agents/worker/state")).json()
        resumed = await http.post("/-/web/agents/worker/resume")
        after = (await http.get("/api/agents/worker/state")).json()
        unknown = await http.post("/-/web/agents/nobody/pause")
        wrong_prefix = await http.post("/api/agents/worker/pause")
        not_an_action = await http.post("/-/web/agents/worker/rebuild")
    assert (paused.status, resumed.status) == (200, 200)
    assert (state["paused"], after["paused"]) == (True, False)
    assert unknown.status == 404
    assert "no agent named 'nobody'" in unknown.json()["error"]
    assert (wrong_prefix.status, not_an_action.status) == (404, 404)


async def test_state_shows_each_change_at_once(hive):
    """What a listing keeps between requests (each config's JSON, each agent's container spec)
    never hides a change: every kind shows in the very next /api/state."""
    http = operator(hive)

    async def worker() -> dict:
        state = (await http.get("/api/state")).json()
        return next(agent for agent in state["agents"] if agent["name"] == "worker")

    with trio.fail_after(30):
        before = await worker()
        hive.agents.set_state("worker", State.COMPACTING, "tidying up")
        compacting = await worker()
        await http.post("/api/agents/worker/model", {"model": "opus"})  # busy: queued
        queued_model = await worker()
        hive.agents.set_state("worker", State.IDLE)
        await http.post("/-/web/agents/worker/pause")
        paused = await worker()
        await http.post("/api/agents/worker/messages", {"body": "queued while paused"})
        queued = await worker()
        await http.post("/api/agents/worker/model", {"model": "sonnet"})
        switched = await worker()
        await hive.rebuild("worker", AgentConfig(instructions="Triage the inbox ✓", memory_max_mb=512))
        rebuilt = await worker()
        agent = hive.agents.get("worker")
        agent.config = dataclasses.replace(agent.config, instructions="replaced in place")
        replaced = await worker()
    assert (before["state"], before["paused"], before["inbox_depth"]) == ("idle", False, 0)
    assert (compacting["state"], compacting["detail"]) == ("compacting", "tidying up")
    assert queued_model["queued_model"] == "opus"
    assert (paused["paused"], paused["state"]) == (True, "idle")
    assert queued["inbox_depth"] == 1
    assert (switched["model"], before["model"]) == ("sonnet", "haiku")
    assert switched["model_switched_at"] is not None
    assert rebuilt["config"]["instructions"] == "Triage the inbox ✓"
    assert (before["config"]["memory_max_mb"], rebuilt["config"]["memory_max_mb"]) == (None, 512)
    assert replaced["config"]["instructions"] == "replaced in place"


async def test_the_listing_hands_limits_the_spec_as_it_is_now(hive):
    """The spec passed to ``backend.limits`` is made once per agent, and again when it changes:
    a new config's caps, a new config repo for the manager to see."""
    with trio.fail_after(30):
        manager_before = hive.listed_spec("manager")
        assert hive.listed_spec("manager") is manager_before  # kept between listings
        await operator(hive).post("/api/spawn", {"name": "scout"})
        manager_after = hive.listed_spec("manager")
        await hive.rebuild("worker", AgentConfig(memory_max_mb=256))
        worker = hive.listed_spec("worker")
    assert "/agents/scout/config" not in manager_before.extra_binds
    assert "/agents/scout/config" in manager_after.extra_binds
    assert manager_after.extra_binds == hive.container_spec("manager").extra_binds
    assert worker.limits == hive.agent_limits("worker")
    assert worker.limits.memory_max_mb == 256


async def test_state_is_the_json_jsonify_would_give(hive):
    """/api/state is encoded by orjson: the document Quart's jsonify gives, keys sorted as it sorts them."""
    await hive.rebuild("worker", AgentConfig(instructions="naïve café"))
    snapshot = hive.agents.get("worker").snapshot()
    value = {
        "agents": [snapshot],
        "on": datetime.date(2026, 12, 7),
        "spec": hive.agent_limits("worker"),
        "ratio": 0.1,
        "none": None,
        "big": 2**53,
    }
    async with dashboard_of(hive).app.app_context():
        fast = await large_json(value).get_data()
        slow = await jsonify(value).get_data()
    assert json.loads(fast) == json.loads(slow)
    keys = [key for key, _ in json.loads(fast, object_pairs_hook=list)]
    assert keys == ["agents", "big", "none", "on", "ratio", "spec"]
    with trio.fail_after(10):
        reply = await operator(hive).get("/api/state")
    assert reply.headers["content-type"] == "application/json"
    worker = next(agent for agent in reply.json()["agents"] if agent["name"] == "worker")
    assert worker["config"]["instructions"] == "naïve café"
    assert set(worker) == {*snapshot, "limits", "inbox_depth", "egress_denied"}
