"""One hive on three hosts, end to end: a real ``hyperhive up`` per host (a, b, c: each its own
state dir, uid range and dashboard), its agents in bwrap sandboxes running the real Claude Code
CLI on the rehearsal model, all on one real three-node JetStream cluster.

The three daemons start once for the module (the machine is slow) and every test here uses
them, each with agents and questions of its own: a conversation across the three hosts;
questions asked on a, seen and answered on b and c; an approval asked on a, given on c; a crash
on b in a's event stream; and, last, a question whose host is down."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_bwrap import needs_bwrap
from test_cluster_faults import HostDaemon, agent_rows, until
from test_cluster_hosts import placement_ready

from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.hostclient import HostCommandError
from hyperhive_core.testing import Script, needs_claude

pytestmark = [needs_claude, needs_bwrap, pytest.mark.slow]

# Uids clear of a real hive's and of the other bwrap tests'.
FIRST_UID = {"a": 63400, "b": 63420, "c": 63440}


def scripts() -> dict[str, Script]:
    """What each host's agents answer.

    a: the manager delegates the report to the worker and tells the operator what came back; asked
    to, it asks the operator four questions, or asks for a helper on c. b: the worker asks the
    oracle and reports the answer. c: the oracle answers.
    """
    on_a, on_b, on_c = Script(), Script(), Script()
    on_a.on("manager", "write the report").call("send", {"to": "worker", "body": "please write the report"}).reply(
        "delegated"
    )
    on_a.on("manager", regex=r"report: (?P<report>[^\n]*)").call(
        "send", {"to": "operator", "body": "done, {{match.report}}"}
    ).reply("told the operator")
    on_a.on("manager", "ask the operator").call(
        "ask_operator", {"question": "Ship on Friday?", "options": ["yes", "no"], "ttl_seconds": 600}
    ).call("ask_operator", {"question": "Which colour?", "ttl_seconds": 600}).call(
        "ask_operator", {"question": "Which font?", "ttl_seconds": 600}
    ).call("ask_operator", {"question": "Anyone there?", "ttl_seconds": 3}).reply("asked")
    on_a.on("manager", "ask before a break").call("ask_operator", {"question": "Lunch?", "ttl_seconds": 600}).call(
        "ask_operator", {"question": "Coffee?", "ttl_seconds": 20}
    ).reply("asked")
    on_a.on("manager", "hire a helper").call(
        "request_spawn", {"name": "helper", "description": "helps the worker", "host": "c"}
    ).reply("{{result}}")
    on_b.on("worker", "please write the report").call("send", {"to": "oracle", "body": "what is the answer?"}).reply(
        "asked the oracle"
    )
    on_b.on("worker", regex=r"the answer is (?P<n>\d+)").call(
        "send", {"to": "manager", "body": "report: the answer is {{match.n}}"}
    ).reply("reported")
    on_c.on("oracle", "what is the answer?").call("send", {"to": "worker", "body": "the answer is 42"}).reply(
        "answered"
    )
    for script in (on_a, on_b, on_c):
        script.otherwise("ok")
    return {"a": on_a, "b": on_b, "c": on_c}


AGENTS: dict[str, dict[str, dict[str, Any]]] = {
    "a": {},  # the manager: every host declares it, a runs it (it starts first)
    "b": {"worker": {"allowed_recipients": ["oracle"]}},
    "c": {"oracle": {"allowed_recipients": ["worker"]}},
}


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory, hyperhive: str) -> Iterator[dict[str, HostDaemon]]:
    """Hosts a, b and c, started in that order, on one three-node cluster; stopped after the module."""
    root = tmp_path_factory.mktemp("three-hosts")
    env = {k: v for k, v in os.environ.items() if k not in ("HYPERHIVE_LOAD_PLUGINS", "HYPERHIVE_CONFIG")}
    cluster = LocalCluster(root / "nats")
    cluster.start()
    hosts: dict[str, HostDaemon] = {}
    try:
        placement_ready(cluster.urls)
        for name, script in scripts().items():
            hosts[name] = HostDaemon(root, name, cluster.urls, env, hyperhive)
            hosts[name].configure(
                script,
                AGENTS[name],
                backend="bwrap",
                bwrap={"uid_range_start": FIRST_UID[name], "uid_range_size": 20},
            )
            hosts[name].up()
        yield hosts
    finally:
        for daemon in hosts.values():
            daemon.stop()
        cluster.close()


def error_of(refused: urllib.error.HTTPError) -> str:
    """What a dashboard refusal says: its ``error``."""
    return str(json.loads(refused.read())["error"])


def refusal(call: Any) -> str:
    """What a dashboard request that must be refused says: its 400's ``error``."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        call()
    assert refused.value.code == 400
    return error_of(refused.value)


def test_three_hosts_delegate_ask_and_answer_in_bwrap_sandboxes(hive):
    """The manager on a delegates to the worker on b, who asks the oracle on c; the operator asks
    from c's CLI and reads the reply on b's dashboard."""
    a, b, c = hive["a"], hive["b"], hive["c"]
    placement = {row["name"]: row["host"] for row in c.status()["agents"]}
    assert placement == {"manager": "a", "worker": "b", "oracle": "c"}
    assert [(h["name"], h["up"]) for h in b.status()["cluster"]["hosts"]] == [("a", True), ("b", True), ("c", True)]

    assert c.cli("send", "manager", "write the report").stdout.startswith("sent message")

    def reply_on_b() -> list[dict[str, Any]]:
        return [m for m in b.api("/api/inbox") if m["from"] == "manager"]

    [reply] = until(reply_on_b, 180, "the manager's reply, on b's dashboard")
    assert reply["body"] == "done, the answer is 42"
    # Every turn ran in its own host's sandbox; a's live tail has the oracle's, tagged with host c.
    turn = a.first_event(lambda event: event["type"] == "turn_end", "oracle", "--after", "0")
    assert turn["data"]["host"] == "c"
    for daemon in (a, b, c):
        assert daemon.status()["backend"]["isolated"]


def test_a_question_asked_on_a_is_answered_once_from_b_or_c(hive):
    a, b, c = hive["a"], hive["b"], hive["c"]
    b.cli("send", "manager", "ask the operator")

    def asked() -> dict[str, int] | None:  # "Anyone there?" may expire before the manager asks the last
        found = {q["question"]: q["id"] for q in b.request("questions", all=True)}
        return found if len(found) == 4 else None

    ids = until(asked, 120, "the manager's four questions, listed on b")
    ship, colour, font, anyone = (ids[q] for q in ("Ship on Friday?", "Which colour?", "Which font?", "Anyone there?"))
    # Every host's dashboard shows them, in the questions panel.
    for daemon in (b, c):
        html = daemon.api("/-/web/panels/questions")["html"]
        assert all(f'data-question="{qid}"' in html for qid in (ship, colour, font)), daemon.name
    assert [q["id"] for q in c.request("questions")] == [q["id"] for q in a.request("questions")]

    # An answer that is not one of its options, from c: refused, as on a.
    assert "takes one of 'yes', 'no'" in refusal(lambda: c.api("/api/answer-question", {"id": ship, "answer": "maybe"}))
    # From b's dashboard; then again, from b's dashboard and c's CLI: already answered.
    answered = b.api("/api/answer-question", {"id": ship, "answer": "yes"})
    assert (answered["status"], answered["answer"]) == ("answered", "yes")
    assert f"question {ship} is already answered" in refusal(
        lambda: b.api("/api/answer-question", {"id": ship, "answer": "no"})
    )
    again = c.cli("answer", str(ship), "no", check=False)
    assert again.returncode != 0
    assert f"question {ship} is already answered" in again.stderr

    # From b's CLI and c's dashboard at once: one wins, the other hears it was already answered.
    results: dict[str, Any] = {}

    def by_cli() -> None:
        results["b cli"] = b.cli("answer", str(colour), "blue", check=False)

    racer = threading.Thread(target=by_cli)
    racer.start()
    try:
        results["c dashboard"] = c.api("/api/answer-question", {"id": colour, "answer": "green"})
    except urllib.error.HTTPError as exc:
        results["c dashboard"] = error_of(exc)
    racer.join(timeout=120)
    cli_won = results["b cli"].returncode == 0
    dashboard_won = isinstance(results["c dashboard"], dict) and results["c dashboard"].get("status") == "answered"
    assert cli_won != dashboard_won, results
    lost = str(results["c dashboard"]) if cli_won else results["b cli"].stderr
    assert f"question {colour} is already answered" in lost, results

    # From b's host socket.
    assert b.request("answer-question", id=font, answer="mono")["status"] == "answered"
    with pytest.raises(HostCommandError, match=f"question {font} is already answered"):
        b.request("answer-question", id=font, answer="serif")

    # The short one expires on a, and b sees it so; answering it then is refused.
    def expired() -> dict[str, Any] | None:
        return next(
            (q for q in b.request("questions", all=True) if q["id"] == anyone and q["status"] != "pending"), None
        )

    assert until(expired, 60, "question 'Anyone there?' to expire")["answer"] == "[expired]"
    with pytest.raises(HostCommandError, match=f"question {anyone} is already expired"):
        c.request("answer-question", id=anyone, answer="me")

    # The manager, on a, got each resolution once.
    def resolutions() -> list[dict[str, Any]] | None:
        events = [
            json.loads(m["body"])
            for m in a.request("recv", agent="manager", limit=200)
            if m["kind"] == "event" and '"operator_answered"' in m["body"]
        ]
        mine = [e for e in events if e["id"] in (ship, colour, font, anyone)]
        return mine if len(mine) >= 4 else None

    got = until(resolutions, 60, "the manager's four operator_answered events")
    assert sorted(e["id"] for e in got) == sorted([ship, colour, font, anyone]), got
    assert {e["id"]: e["status"] for e in got} == {
        ship: "answered",
        colour: "answered",
        font: "answered",
        anyone: "expired",
    }


def test_an_approval_asked_on_a_is_given_on_cs_dashboard_and_acts_on_the_right_host(hive):
    a, b, c = hive["a"], hive["b"], hive["c"]
    a.cli("send", "manager", "hire a helper")

    def pending_on_c() -> list[dict[str, Any]]:
        return [x for x in c.api("/api/approvals?status=pending") if x["agent"] == "helper"]

    [approval] = until(pending_on_c, 120, "the manager's request for a helper, on c's dashboard")
    assert approval["host"] == "c"
    approved = c.api(f"/api/approvals/{approval['id']}/approve", {"note": "go ahead"})
    assert approved["status"] == "approved", approved
    # It lives with the manager, on a; the helper runs on c, in c's sandbox, and every host says so.
    assert [x["status"] for x in a.request("approvals") if x["id"] == approval["id"]] == ["approved"]
    assert f"approval {approval['id']} is already approved" in refusal(
        lambda: b.api(f"/api/approvals/{approval['id']}/approve", {})
    )
    for daemon in (a, b, c):
        assert agent_rows(daemon.status())["helper"]["host"] == "c", daemon.name
    assert c.request("agent", agent="helper")["name"] == "helper"
    b.cli("send", "helper", "hello helper")
    until(lambda: agent_rows(a.status())["helper"]["inbox_depth"] == 0, 120, "the helper to take b's message")


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """Every process below ``pid``, with its command line."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found.append((child, Path(f"/proc/{child}/cmdline").read_text().split("\0")))
            except OSError:
                continue
            todo.append(child)
    return found


def test_a_crash_on_b_shows_in_as_event_stream_tagged_with_b(hive):
    """The worker's Claude Code, in its sandbox on b, killed with SIGKILL between turns."""
    a, b = hive["a"], hive["b"]
    b.cli("send", "worker", "wake up")  # a session to kill, if it has none yet
    until(lambda: agent_rows(b.status())["worker"]["state"] == "idle", 120, "the worker's turn to end")

    def workers_claude() -> int | None:
        assert b.process is not None
        for sandbox, command in descendants(b.process.pid):
            if os.path.basename(command[0]) == "bwrap" and any("/worker" in part for part in command):
                inside = descendants(sandbox)
                return next((pid for pid, command in inside if any("claude" in part for part in command[:2])), None)
        return None

    os.kill(until(workers_claude, 60, "the worker's Claude Code on b"), signal.SIGKILL)
    crash = a.first_event(
        lambda event: event["type"] == "error" and "container crashed" in event["data"].get("text", ""),
        "worker",
        "--after",
        "0",
    )
    assert crash["data"]["host"] == "b"
    # bwrap, the sandbox's first process, exits with 128 + 9 for its child's SIGKILL.
    assert (
        crash["data"]["text"] == "container crashed: Claude Code exited with status 137: killed by signal 9 (SIGKILL)"
    ), crash


def test_a_question_waits_for_its_host_and_expires_there_if_it_fell_due_meanwhile(hive):
    """Last: it stops host a."""
    a, b, c = hive["a"], hive["b"], hive["c"]
    c.cli("send", "manager", "ask before a break")

    def asked() -> dict[str, dict[str, Any]] | None:
        pending = {q["question"]: q for q in c.request("questions")}
        return pending if {"Lunch?", "Coffee?"} <= pending.keys() else None

    asked_now = until(asked, 120, "the manager's two questions, listed on c")
    ids = {text: question["id"] for text, question in asked_now.items()}
    a.stop()
    assert time.time() < asked_now["Coffee?"]["deadline"], "'Coffee?' fell due before its host stopped; raise its ttl"
    until(lambda: not next(h for h in b.status()["cluster"]["hosts"] if h["name"] == "a")["up"], 30, "a to be down")
    refused = b.cli("answer", str(ids["Lunch?"]), "yes", check=False)
    assert "'manager' runs on host 'a', which is down" in refused.stderr, refused.stderr
    assert "start its daemon (hyperhive up on a)" in refused.stderr
    with pytest.raises(HostCommandError, match="'manager' runs on host 'a', which is down"):
        c.request("questions")
    panel = b.api("/-/web/panels/questions")["html"]
    assert "&#x27;manager&#x27; runs on host &#x27;a&#x27;, which is down" in panel, panel
    assert b"M1ND H4S QU3STI0NS" in b.page("/")  # b's dashboard still serves its host page

    # Back: the question that fell due meanwhile expires as a starts; the other is cancelled from b.
    until(lambda: time.time() > asked_now["Coffee?"]["deadline"], 60, "'Coffee?' to fall due while a is down")
    a.up()

    def coffee() -> dict[str, Any] | None:
        return next((q for q in c.request("questions", all=True) if q["id"] == ids["Coffee?"]), None)

    until(lambda: (q := coffee()) is not None and q["status"] == "expired", 60, "'Coffee?' to expire on a's return")
    cancelled = b.api("/api/answer-question", {"id": ids["Lunch?"], "cancel": True})
    assert (cancelled["status"], cancelled["answer"]) == ("cancelled", "[cancelled]")
