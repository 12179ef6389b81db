"""Telemetry with real parts: the sqlite tables, and series from scripted turns with the real CLI."""

from __future__ import annotations

import collections
import json
import subprocess
import time

import hyperhive_telemetry
import pytest
import sqlite_utils
import trio
from hyperhive_telemetry import store
from hyperhive_telemetry.api import metrics_text, stats_body
from hyperhive_telemetry.collect import TELEMETRY, party_class, turn_samples
from hyperhive_telemetry.store import Sample
from prometheus_client.parser import text_string_to_metric_families

from hyperhive_core import ConfigError, Message, Turn, TurnExit, TurnResult
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

IDLE = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'


@pytest.fixture
def db(tmp_path):
    """A sqlite database with the plugin's tables, as its migrations create them."""
    opened = sqlite_utils.Database(tmp_path / "hive.db")
    for migration in store.MIGRATIONS:
        migration(opened)
    yield opened
    opened.close()


def test_query_filters_by_since_agent_and_key(db):
    samples = [
        Sample("worker", 100, "tool:list_agents", 1),
        Sample("worker", 200, "tool:listXagents", 1),
        Sample("worker", 300, "tool_calls", 2),
        Sample("manager", 300, "tool:send", 1),
        Sample("worker", 400, "inbox_depth", 3),
    ]
    store.record(db, samples)

    def query(**kwargs):
        return store.query(db, **kwargs)

    assert query(since=200) == samples[1:]
    assert query(since=200, until=300) == samples[1:4]
    assert query(since=0, agents=["manager"]) == [samples[3]]
    # A prefix is a prefix: '_' in it is no wildcard.
    assert query(since=0, keys=["tool:list_*"]) == [samples[0]]
    assert query(since=0, keys=["tool:*"]) == [*samples[:2], samples[3]]
    assert query(since=0, keys=["tool_calls", "inbox_depth"], agents=["worker"]) == samples[2:3] + samples[4:]
    assert query(since=401) == []


@needs_claude
async def test_totals_add_up_and_outlive_retention(make_pm, tmp_path):
    old, new = time.time() - 10 * 86400, time.time()
    pm = make_pm(telemetry=hyperhive_telemetry)
    # No agent named worker: the sampler records nothing of its own for it.
    async with running_hive(tmp_path, pm, IDLE, telemetry={"retention_days": 7}) as hive:
        for at in (old, new):
            turn = [Sample("worker", at, "exit:ok", 1), Sample("worker", at, "cost_usd", 0.25)]
            await hive.store.write(lambda db, turn=turn: store.record(db, turn, add_to_totals=True))
        await hive.store.write(lambda db: store.record(db, [Sample("worker", old, "inbox_depth", 4)]))
        assert await hive.stash[TELEMETRY].prune() == 3
        remaining = await hive.store.read(lambda db: store.query(db, since=0, agents=["worker"]))
        totals = await hive.store.read(store.totals)
    assert [(s.key, s.ts) for s in remaining] == [("exit:ok", new), ("cost_usd", new)]
    assert totals == [("worker", "cost_usd", 0.5), ("worker", "exit:ok", 2)]


def message(sender):
    return Message(1, sender, "worker", "text", "hi", 0.0, "leased", 1, None)


def test_a_turns_figures():
    result = TurnResult(
        exit=TurnExit.OK,
        text="done",
        duration_ms=900,
        cost_usd=0.02,
        tool_calls=3,
        tools_used=["Read", "send", "Read"],
        usage={},
        permission_denials=[{"tool_name": "Bash"}],
        terminal_reason="completed",
        session_id="s",
    )
    turn = Turn("worker", (message("operator"), message("boss"), message("hive"), message("boss")), "prompt")
    turn.result, turn.exit, turn.duration_ms, turn.cost_usd = result, "compact-retry", 950, 0.02
    sent = collections.Counter({"peer": 2, "operator": 1})
    figures = {s.key: s.value for s in turn_samples(turn, sent, 100.0, manager="boss")}
    assert figures == {
        "turn_duration_ms": 950,
        "tool_calls": 3,
        "cost_usd": 0.02,
        "permission_denials": 1,
        "exit:compact-retry": 1,
        "tool:Read": 2,
        "tool:send": 1,
        "received:operator": 1,
        "received:manager": 2,
        "received:system": 1,
        "sent:peer": 2,
        "sent:operator": 1,
    }
    # A turn that never got a result (the session kept dying) still counts, as a failure.
    failed = Turn("worker", (message("peer-agent"),), "prompt")
    failed.exit, failed.duration_ms = "failure", 30000
    figures = {s.key: s.value for s in turn_samples(failed, collections.Counter(), 100.0, manager="boss")}
    assert figures == {
        "turn_duration_ms": 30000,
        "tool_calls": 0,
        "cost_usd": 0.0,
        "permission_denials": 0,
        "exit:failure": 1,
        "received:peer": 1,
    }


def test_party_classes():
    assert [party_class(name, "boss") for name in ("operator", "hive", "boss", "worker")] == [
        "operator",
        "system",
        "manager",
        "peer",
    ]


@pytest.mark.parametrize(
    "key", ["sample_interval_seconds", "window_seconds", "retention_days", "retention_interval_seconds"]
)
def test_config_ranges(make_pm, make_config, key):
    with pytest.raises(ConfigError) as caught:
        make_config(make_pm(telemetry=hyperhive_telemetry), telemetry={key: 0})
    assert f"[telemetry] {key} must be positive, not 0" in str(caught.value)


# -- with the real CLI ------------------------------------------------------------------------


async def stats_when(hive, args, ready):
    """What /api/stats answers once ``ready(body)``: a turn's figures are written just after its turn_end."""
    while not ready(body := await stats_body(hive, args)):
        await trio.sleep(0.05)
    return body


NOTES_TEXT = "# notes\n- the build runs with make test\n"


def scenario(notes_path) -> str:
    return f"""
[[agents.manager.rules]]
when = "from operator"
steps = [
  {{ tool = "send", input = {{ to = "worker", body = "please report" }} }},
  {{ text = "asked the worker" }},
]

[[agents.worker.rules]]
when = "please report"
steps = [
  {{ tool = "Write", input = {{ file_path = "{notes_path}", content = {json.dumps(NOTES_TEXT)} }} }},
  {{ tool = "WebFetch", input = {{ url = "http://127.0.0.1:9/", prompt = "read it" }} }},
  {{ tool = "send", input = {{ to = "operator", body = "report: all quiet" }} }},
  {{ text = "done" }},
]
"""


@needs_claude
@pytest.mark.slow
async def test_series_from_scripted_turns(make_pm, tmp_path, hyperhive, clean_env):
    notes = tmp_path / "state" / "agents" / "worker" / "state" / "notes.md"
    pm = make_pm(telemetry=hyperhive_telemetry)
    began = time.time()
    async with running_hive(
        tmp_path, pm, scenario(notes), agents={"worker": {}}, telemetry={"sample_interval_seconds": 0.2}
    ) as hive:
        await hive.broker.send("operator", "manager", "status please")
        with trio.fail_after(60):
            await operator_reply(hive, "worker")
            end = await next_event(hive, "worker", "turn_end")
            # The turn's figures, and a sampler tick after the turn.
            body = await stats_when(
                hive,
                {"since": [str(began)]},
                lambda body: (
                    body["summary"].get("worker", {}).get("turns") == 1
                    and any(s["key"] == "notes_bytes" and s["points"][-1][0] > end.at for s in body["series"])
                ),
            )

        worker, manager = body["summary"]["worker"], body["summary"]["manager"]
        assert worker["turns"] == 1
        assert worker["exits"] == {"ok": 1}
        assert worker["tools"] == {"Write": 1, "WebFetch": 1, "send": 1}
        assert worker["tool_calls_per_turn"] == 3
        assert worker["permission_denials"] == 1  # WebFetch is not an allowed tool
        assert worker["messages_per_turn"]["sent"]["operator"] == 1
        assert worker["messages_per_turn"]["received"]["manager"] == 1
        assert worker["turn_duration_ms"]["p50"] == end.data["duration_ms"]
        assert worker["cost_usd"] == pytest.approx(end.data["cost_usd"])
        assert worker["notes_bytes"] == len(NOTES_TEXT)
        assert worker["inbox_depth"]["current"] == 0
        assert worker["seconds_since_last_turn"] >= 0
        assert manager["messages_per_turn"]["sent"]["peer"] == 1
        assert manager["messages_per_turn"]["received"]["operator"] == 1
        assert manager["tools"] == {"send": 1}
        assert body["summary"]["hive"]["approval_queue"]["current"] == 0
        keys = {(s["agent"], s["key"]) for s in body["series"]}
        assert ("worker", "sent:operator") in keys
        assert ("manager", "exit:ok") in keys

        # since: nothing of the turns after they ended; a key filter keeps to its family.
        later = await stats_body(hive, {"since": [str(end.at + 0.001)], "key": ["exit:*", "turn_duration_ms"]})
        assert later["series"] == []
        tools = await stats_body(hive, {"since": [str(began)], "key": ["tool:*"], "agent": ["worker"]})
        assert {s["key"] for s in tools["series"]} == {"tool:Write", "tool:WebFetch", "tool:send"}

        await hive.approvals.request_spawn("manager", "helper", "a second pair of hands")
        families = {f.name: f for f in text_string_to_metric_families(await metrics_text(hive))}
        assert families["hyperhive_approval_queue_length"].samples[0].value == 1
        turns = {(s.labels["agent"], s.labels["exit"]): s.value for s in families["hyperhive_turns"].samples}
        assert turns == {("manager", "ok"): 1, ("worker", "ok"): 1}
        notes_gauge = {s.labels["agent"]: s.value for s in families["hyperhive_notes_bytes"].samples}
        assert notes_gauge["worker"] == len(NOTES_TEXT)

        # The operator's command line.
        config = tmp_path / "hyperhive.toml"
        config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
        env = {**clean_env, "HYPERHIVE_CONFIG": str(config), "HYPERHIVE_LOAD_PLUGINS": "telemetry"}

        def cli(*args):
            return subprocess.run([hyperhive, "stats", *args], env=env, capture_output=True, text=True, timeout=30)

        with trio.fail_after(30):
            table = await trio.to_thread.run_sync(cli, "worker", "--since", "1h")
            bad = await trio.to_thread.run_sync(cli, "--since", "yesterday")
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[1].split()[:2] == ["worker", "1"]
        assert bad.returncode == 1
        assert "since='yesterday' is not a time" in bad.stderr


@needs_claude
@pytest.mark.slow
async def test_a_failed_turn_is_counted(make_pm, tmp_path):
    """A model error fails the turn (one attempt, no CLI retries); the retry of its message succeeds."""
    flaky = """
[[agents.worker.rules]]
steps = [{ text = "recovered", status = 500, times = 1 }]
"""
    pm = make_pm(telemetry=hyperhive_telemetry)
    async with running_hive(
        tmp_path, pm, flaky, agents={"worker": {}}, claude={"turn_attempts": 1, "api_retries": 0}
    ) as hive:
        await hive.broker.send("operator", "worker", "hello")
        with trio.fail_after(60):
            first = await next_event(hive, "worker", "turn_end")
            second = await next_event(hive, "worker", "turn_end", after=first.id)
            body = await stats_when(
                hive,
                {"agent": ["worker"], "series": ["0"]},
                lambda body: body["summary"].get("worker", {}).get("turns") == 2,
            )
        assert (first.data["exit"], second.data["exit"]) == ("failure", "ok")
        assert body["series"] == []
        assert body["summary"]["worker"]["exits"] == {"failure": 1, "ok": 1}
        families = {f.name: f for f in text_string_to_metric_families(await metrics_text(hive))}
        exits = {
            s.labels["exit"]: s.value for s in families["hyperhive_turns"].samples if s.labels["agent"] == "worker"
        }
        assert exits == {"failure": 1, "ok": 1}


@needs_claude
async def test_a_dead_letter_is_counted_for_its_recipient(make_pm, tmp_path):
    """A message whose only attempt fails moves to dead-letter: one count, in the summary and in /metrics."""
    failing = '[[agents.worker.rules]]\nsteps = [{ text = "never", status = 500, times = 1000 }]\n'
    pm = make_pm(telemetry=hyperhive_telemetry)
    async with running_hive(
        tmp_path,
        pm,
        failing,
        agents={"worker": {}},
        claude={"turn_attempts": 1, "api_retries": 0},
        broker={"max_attempts": 1},
    ) as hive:
        sent = await hive.broker.send("operator", "worker", "hello")
        with trio.fail_after(60):
            died = await next_event(hive, "worker", "message_dead")
            # The hooks ran before the turn ended: the count is written by then.
            await next_event(hive, "worker", "turn_end", after=died.id)
        assert died.data["id"] == sent.id
        body = await stats_body(hive, {"agent": ["worker"], "key": ["dead_lettered"]})
        assert body["summary"]["worker"]["dead_lettered"] == 1
        families = {f.name: f for f in text_string_to_metric_families(await metrics_text(hive))}
        [sample] = families["hyperhive_messages_dead_lettered"].samples
        assert (sample.name, sample.labels, sample.value) == (
            "hyperhive_messages_dead_lettered_total",
            {"agent": "worker"},
            1,
        )
        assert families["hyperhive_messages_dead_lettered"].type == "counter"


@needs_claude
async def test_memory_is_sampled_while_warm_and_is_zero_asleep(make_pm, tmp_path):
    """No cgroup on the process backend: the PSS of the agent's processes, and nothing once it sleeps."""
    echo = '[[agents.worker.rules]]\nsteps = [{ text = "heard" }]\n'
    pm = make_pm(telemetry=hyperhive_telemetry)
    async with running_hive(
        tmp_path,
        pm,
        echo,
        agents={"worker": {}},
        claude={"idle_release_seconds": 2},
        telemetry={"sample_interval_seconds": 0.2},
    ) as hive:
        await hive.broker.send("operator", "worker", "hello")
        with trio.fail_after(60):
            end = await next_event(hive, "worker", "turn_end")
            going = await next_event(hive, "worker", "note", lambda e: e.data["text"].startswith("idle for"), end.id)
            asleep = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "asleep", end.id)

            def sampled(body) -> bool:
                points = [p for s in body["series"] for p in s["points"]]
                return any(at > asleep.at for at, _ in points)

            body = await stats_when(hive, {"agent": ["worker"], "key": ["memory_bytes"]}, sampled)
        (series,) = body["series"]
        warm = [value for at, value in series["points"] if end.at < at < going.at]
        after = [value for at, value in series["points"] if at > asleep.at]
        assert warm
        assert min(warm) > 50 * 1024 * 1024  # Claude Code alone holds more than this
        assert after[-1] == 0
        assert body["summary"]["worker"]["memory_bytes"]["max"] == max(series["points"], key=lambda p: p[1])[1]
        families = {f.name: f for f in text_string_to_metric_families(await metrics_text(hive))}
        gauge = {s.labels["agent"]: s.value for s in families["hyperhive_memory_bytes"].samples}
        assert gauge["worker"] == 0
        assert families["hyperhive_memory_bytes"].type == "gauge"


@needs_claude
async def test_a_purged_agent_leaves_the_stats_and_metrics(make_pm, tmp_path):
    """Kept state keeps its figures (restore brings it back); a purge forgets them: stats, its command, /metrics."""
    from hyperhive_core.testing import host_request, run_cli

    pm = make_pm(telemetry=hyperhive_telemetry)
    async with running_hive(tmp_path, pm, IDLE, telemetry={"sample_interval_seconds": 0.2}) as hive:
        await hive.spawn("scout")
        await hive.broker.send("operator", "scout", "hello")
        with trio.fail_after(60):
            await next_event(hive, "scout", "turn_end")
            await stats_when(hive, {}, lambda body: body["summary"].get("scout", {}).get("turns") == 1)

        async def shown() -> tuple[set[str], set[str], str]:
            summary = (await stats_body(hive, {}))["summary"]
            families = text_string_to_metric_families(await metrics_text(hive))
            metrics = {sample.labels.get("agent") for family in families for sample in family.samples}
            table = await run_cli(hive, "stats")
            assert table.exit_code == 0, table.output
            return set(summary), metrics, table.output

        await host_request(hive, "destroy", agent="scout")
        summary, metrics, table = await shown()
        assert "scout" in summary
        assert "scout" in metrics
        assert "\nscout " in table

        await host_request(hive, "destroy", agent="scout", purge=True)
        await trio.sleep(0.5)  # sampler ticks after the purge add nothing of it
        summary, metrics, table = await shown()
        assert "scout" not in summary
        assert "scout" not in metrics
        assert "scout" not in table
        assert "manager" in summary  # the others keep theirs
        count = "SELECT COUNT(*) FROM telemetry_totals WHERE agent = 'scout'"
        assert await hive.store.read(lambda db: db.execute(count).fetchone()[0]) == 0
