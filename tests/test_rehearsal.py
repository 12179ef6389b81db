"""The rehearsal model: scenario checks, reply choice, the HTTP surface, and the real Claude Code CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest
import trio
from click.testing import CliRunner

from hyperhive_core.cli import cli
from hyperhive_core.names import InvalidName
from hyperhive_core.rehearsal import (
    Director,
    RehearsalError,
    RehearsalServer,
    ScenarioError,
    base_url_for,
    env_for,
    load_demo_scenario,
    load_scenario,
    parse_scenario,
)
from hyperhive_core.rehearsal.scenario import PROMPT_TOO_LONG
from hyperhive_core.rehearsal.wire import Message

REPO = Path(__file__).resolve().parent.parent
CLAUDE = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
needs_claude = pytest.mark.skipif(
    not os.access(CLAUDE, os.X_OK),
    reason=f"the pinned Claude Code CLI is not installed at {CLAUDE}; `make install` installs it",
)
SUMMARY_PROMPT = (
    "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n"
    "Your task is to create a detailed summary of the conversation so far, paying close attention…"
)
CONTINUATION = (
    "This session is being continued from a previous conversation that ran out of context. "
    "The summary below covers the earlier portion of the conversation.\n\nSummary:\n…"
)


def scenario(text: str, source: str = "test.toml") -> Director:
    return Director(parse_scenario(textwrap.dedent(text), source))


# -- building requests as Claude Code does -------------------------------------------


def user(*texts: str) -> dict[str, Any]:
    """A user message: a string, or text blocks when there are several."""
    if len(texts) == 1:
        return {"role": "user", "content": texts[0]}
    return {"role": "user", "content": [{"type": "text", "text": text} for text in texts]}


def system(text: str = "<total_tokens>15000000 tokens left</total_tokens>") -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def results(*texts: str) -> dict[str, Any]:
    blocks = [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": text} for i, text in enumerate(texts)]
    return {"role": "user", "content": blocks}


def reply(director: Director, messages: list[dict[str, Any]], agent: str | None = "manager", session: str = "s1"):
    """Ask the director, and append its reply to ``messages`` as the CLI would."""
    decision = director.decide(agent, {"messages": messages}, session)
    if isinstance(decision.reply, Message):
        messages.append({"role": "assistant", "content": list(decision.reply.content)})
    return decision


def texts_of(decision) -> str:
    return "".join(block["text"] for block in decision.reply.content if block["type"] == "text")


def tool_of(decision) -> tuple[str, Any]:
    (block,) = [block for block in decision.reply.content if block["type"] == "tool_use"]
    return block["name"], block["input"]


# -- scenario files -------------------------------------------------------------------


ERRORS = [
    ("x = 1\n[agents", "not valid TOML"),
    ("title = 'x'", "top level.title: unknown key"),
    ("[agents]", "no [agents] table"),
    ("[[agents.Manager.rules]]\nsteps = [{ text = 'hi' }]", "agents.Manager: 'Manager' is not an agent name"),
    ("[[agents.manager.rules]]\nwhen = 'a'", "agents.manager.rules[0].steps: missing"),
    ("[[agents.manager.rules]]\nonce = 'yes'\nsteps = [{ text = 'hi' }]", "rules[0].once: expected true or false"),
    ("[[agents.manager.rules]]\nwhen = 'a'\nwhen_regex = 'b'\nsteps = [{ text = 'hi' }]", "either when"),
    ("[[agents.manager.rules]]\nwhen_regex = '('\nsteps = [{ text = 'hi' }]", "when_regex: not a valid regular"),
    ("[[agents.manager.rules]]\nsteps = [{ txt = 'hi' }]", "rules[0].steps[0].txt: unknown key; the keys here are"),
    ("[[agents.manager.rules]]\nsteps = [{ delay = 1 }]", "steps[0]: a step needs text, tool, or both"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', input = {} }]", "steps[0].input: input without a tool"),
    ("[[agents.manager.rules]]\nsteps = [{ tool = 'a b' }]", "steps[0].tool: 'a b' is not a tool name"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', times = 2 }]", "steps[0].times: only goes with status"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', status = 200 }]", "steps[0].status: 200 is not an error"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', delay = -1 }]", "steps[0].delay: must be zero or more"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', stream_seconds = -1 }]", "stream_seconds: must be zero or more"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = 'hang' }]", "steps[0].faults: expected an array"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = [] }]", "faults: an empty list serves no fault"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = [500, 'hung'] }]", "faults[1]: 'hung' is not a fault"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = [200] }]", "faults[0]: 200 is not an error status"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = [true] }]", "faults[0]: True is not a fault"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', status = 500, faults = [529] }]", "either status"),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = ['drop'], message = 'm' }]", "message: only goes with"),
    (
        "[[agents.manager.rules]]\nsteps = [{ text = 'a', faults = ['drop'], times = 2 }]",
        "times: only goes with status",
    ),
    ("[[agents.manager.rules]]\nsteps = [{ text = 'a' }, { text = 'b' }]", "steps[1]: never runs"),
    ("[[agents.manager.rules]]\nsteps = [{ text = '{{result}}' }]", "no earlier step of this rule calls a tool"),
    (
        "[[agents.manager.rules]]\nsteps = [{ tool = 't' }, { text = '{{results[1]}}' }]",
        "steps[1].text: {{results[1]}}: 1 earlier step(s)",
    ),
    ("[[agents.manager.rules]]\nsteps = [{ text = '{{match[0]}}' }]", "the rule has no when or when_regex"),
    ("[[agents.manager.rules]]\nwhen_regex = '(a)'\nsteps = [{ text = '{{match[2]}}' }]", "has only 1 group(s)"),
    ("[[agents.manager.rules]]\nwhen_regex = 'a'\nsteps = [{ text = '{{match.x}}' }]", "has no group (?P<x>…)"),
    ("[[agents.manager.rules]]\nsteps = [{ text = '{{bogus}}' }]", "unknown placeholder {{bogus}}"),
    ("[[agents.manager.rules]]\nsteps = [{ text = '{{agent' }]", "unclosed '{{'"),
    ("[[agents.manager.rules]]\nsteps = [{ text = '{{digest}}' }]", "{{digest}} is only for summaries"),
    (
        "[[agents.manager.rules]]\nsteps = [{ tool = 't', input = { a = ['{{result}}'] } }]",
        "steps[0].input: {{result}}: no earlier step",
    ),
    ("[agents.manager]\nsummary = '{{result}}'", "agents.manager.summary: {{result}}: a summary can use"),
    (
        "[[agents.manager.rules]]\nname = 'n'\nsteps = [{ text = 'a' }]\n"
        "[[agents.manager.rules]]\nname = 'n'\nsteps = [{ text = 'b' }]",
        "rules[0].name: another rule of this agent is also named 'n'",
    ),
]


@pytest.mark.parametrize(("text", "error"), ERRORS, ids=[error for _, error in ERRORS])
def test_scenario_errors_name_the_file_and_key(text, error):
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(text, "bad.toml")
    message = str(raised.value)
    assert message.startswith("bad.toml: ")
    assert error in message


def test_scenario_file_that_cannot_be_read(tmp_path):
    with pytest.raises(ScenarioError, match=r"cannot read scenario .*missing\.toml: No such file"):
        load_scenario(tmp_path / "missing.toml")


def test_tool_names_get_the_hive_prefix_unless_built_in_or_full():
    director = scenario("""
        [[agents.manager.rules]]
        steps = [
          { tool = "send" }, { tool = "Bash", input = { command = "ls" } }, { tool = "mcp__other__x" }, { text = "ok" },
        ]
    """)
    messages = [user("go")]
    names = [tool_of(reply(director, messages))[0]]
    for _ in range(2):
        messages.append(results("done"))
        names.append(tool_of(reply(director, messages))[0])
    assert names == ["mcp__hyperhive__send", "Bash", "mcp__other__x"]


# -- choosing replies -----------------------------------------------------------------


def test_rules_are_tried_in_order_agent_rules_before_any_agent_rules():
    director = scenario("""
        [[agents."*".rules]]
        name = "anyone"
        steps = [{ text = "generic {{agent}}" }]

        [[agents.manager.rules]]
        name = "specific"
        when = "status"
        steps = [{ text = "all good" }]

        [[agents.manager.rules]]
        name = "later"
        when = "status"
        steps = [{ text = "never" }]
    """)
    assert texts_of(reply(director, [user("status please")])) == "all good"
    assert texts_of(reply(director, [user("other")])) == "generic manager"
    assert texts_of(reply(director, [user("status please")], agent="worker")) == "generic worker"


def test_steps_follow_the_replies_and_use_earlier_results():
    director = scenario("""
        [[agents.manager.rules]]
        when_regex = 'ask (?P<who>\\w+) about (\\w+)'
        steps = [
          { text = "Asking {{match.who}}.", tool = "send", input = { to = "{{match.who}}", body = "{{match[2]}}?" } },
          { tool = "lookup", input = { id = "{{result.json.id}}", raw = "{{results[0]}}", agent = "{{agent}}" } },
          { text = "{{match[0]}}: {{results[0].json.id}} then {{result}} (asked: {{prompt}})" },
        ]
    """)
    messages = [user("<system-reminder>attribution</system-reminder>", "ask worker about apples"), system()]
    first = reply(director, messages)
    assert (first.rule, first.step) == ("agents.manager.rules[0]", 0)
    assert texts_of(first) == "Asking worker."
    assert tool_of(first) == ("mcp__hyperhive__send", {"to": "worker", "body": "apples?"})
    assert first.reply.stop_reason == "tool_use"

    messages += [results('{"id": 7}'), system()]
    second = reply(director, messages)
    # A template that is one placeholder keeps the JSON type of the value.
    assert tool_of(second) == ("mcp__hyperhive__lookup", {"id": 7, "raw": '{"id": 7}', "agent": "manager"})

    messages += [results("found it")]
    third = reply(director, messages)
    assert third.step == 2
    assert third.reply.stop_reason == "end_turn"
    assert texts_of(third) == "ask worker about apples: 7 then found it (asked: ask worker about apples)"


def test_the_latest_user_text_picks_the_rule_not_what_the_cli_added():
    director = scenario("""
        [[agents.manager.rules]]
        when = "first"
        steps = [{ text = "one" }]

        [[agents.manager.rules]]
        when = "second"
        steps = [{ text = "two" }]
    """)
    interrupted = [user("first"), system(), user("first", "[Request interrupted by user]", "second")]
    assert texts_of(reply(director, interrupted)) == "two"
    after_compact = [
        user(CONTINUATION),
        system(),
        user("<local-command-caveat>first</local-command-caveat>", "<command-name>/compact</command-name>", "second"),
    ]
    assert texts_of(reply(director, after_compact)) == "two"


def test_no_matching_rule_answers_with_a_visible_note():
    director = scenario("[[agents.manager.rules]]\nwhen = 'x'\nsteps = [{ text = 'x' }]", "demo.toml")
    decision = reply(director, [user("hello there")], agent="worker")
    assert decision.rule is None
    assert texts_of(decision) == (
        "[rehearsal] no scenario rule matched agent 'worker' for 'hello there'; "
        "add a rule under [[agents.worker.rules]] in demo.toml"
    )
    unrouted = texts_of(reply(director, [user("hello there")], agent=None))
    assert "without an agent (no /agents/NAME in the base URL)" in unrouted


def test_a_rule_whose_steps_ran_out_ends_the_turn_saying_so():
    director = scenario("[[agents.manager.rules]]\nname = 'short'\nsteps = [{ tool = 'send' }]")
    messages = [user("go")]
    reply(director, messages)
    messages.append(results("sent"))
    decision = reply(director, messages)
    assert decision.reply.stop_reason == "end_turn"
    assert texts_of(decision).startswith("[rehearsal] rule 'short' has no step 1 (it has 1)")


def test_a_template_that_cannot_be_filled_in_ends_the_turn_saying_why():
    director = scenario(
        "[[agents.manager.rules]]\nname = 'r'\nsteps = [{ tool = 'send' }, { text = '{{result.json.id}}' }]"
    )
    messages = [user("go")]
    reply(director, messages)
    messages.append(results("not json"))
    assert texts_of(reply(director, messages)) == (
        "[rehearsal] rule 'r' step 1: {{result.json.id}}: the tool result is not JSON: 'not json'"
    )


def test_once_rules_answer_one_turn_and_survive_retries_within_it():
    director = scenario("""
        [[agents."*".rules]]
        when = "hi"
        once = true
        steps = [{ tool = "send" }, { text = "first time" }]

        [[agents."*".rules]]
        when = "hi"
        steps = [{ text = "again" }]
    """)
    turn = [user("hi")]
    assert reply(director, list(turn)).step == 0
    # The same request again (the CLI retrying) still gets the once rule.
    reply(director, turn)
    turn.append(results("sent"))
    assert texts_of(reply(director, turn)) == "first time"
    assert texts_of(reply(director, [*turn, user("hi")])) == "again"
    # Used up for the manager only.
    assert tool_of(reply(director, [user("hi")], agent="worker"))[0] == "mcp__hyperhive__send"


def test_faults_are_served_the_given_number_of_times_then_the_step():
    director = scenario("""
        [[agents."*".rules]]
        steps = [
          { text = "ok", tool = "send", status = 500, times = 2, delay = 0.5 },
          { text = "done", status = 400 },
        ]
    """)
    first = reply(director, [user("go")])
    assert (first.reply.status, first.reply.message, first.delay) == (500, "rehearsal fault: HTTP 500", 0.5)
    assert first.reply.body() == {"type": "error", "error": {"type": "api_error", "message": first.reply.message}}
    assert reply(director, [user("go")]).reply.status == 500
    assert texts_of(reply(director, [user("go")])) == "ok"
    # Counted per agent: another agent gets its own faults.
    assert reply(director, [user("go")], agent="worker").reply.status == 500
    too_long = reply(director, [user("go"), {"role": "assistant", "content": []}, results("x")])
    assert too_long.reply.body()["error"] == {"type": "invalid_request_error", "message": PROMPT_TOO_LONG}


def test_a_fault_list_is_served_in_order_then_the_step():
    director = scenario("""
        [[agents."*".rules]]
        name = "flaky"
        once = true
        steps = [{ text = "finally", faults = [500, "hang", 529, "drop", "stall"], message = "busy" }]

        [[agents."*".rules]]
        steps = [{ text = "the next turn" }]
    """)
    served = [reply(director, [user("go")]) for _ in range(6)]
    assert [(d.reply.status, d.reply.message) for d in served[0:3:2]] == [(500, "busy"), (529, "busy")]
    assert [d.cut.how if d.cut else None for d in served] == [None, "hang", None, "drop", "stall", None]
    assert [d.describe() for d in served[1:6:2]] == [
        "rule 'flaky' step 0 → hang",
        "rule 'flaky' step 0 → drop",
        "rule 'flaky' step 0 → 'finally'",
    ]
    # A cut reply never reached the client, so it did not use up the once rule; the whole one did.
    assert texts_of(reply(director, [user("go")])) == "the next turn"


def test_summary_requests_get_a_summary_built_from_the_conversation():
    director = scenario("""
        [agents.worker]
        summary = "custom for {{agent}}, last asked: {{prompt}}"

        [[agents."*".rules]]
        steps = [{ text = "ok" }]
    """)
    history = [user("<system-reminder>r</system-reminder>", "plan the garden"), system(), user("water it")]
    decision = reply(director, [*history, {"role": "assistant", "content": []}, user(SUMMARY_PROMPT)])
    assert decision.rule == "compaction"
    text = texts_of(decision)
    assert text.startswith("<analysis>")
    summary = text.split("<summary>\n", 1)[1]
    assert (
        summary == "Rehearsal summary for manager. The user messages so far:\n- plan the garden\n- water it\n</summary>"
    )
    custom = reply(director, [*history, user(SUMMARY_PROMPT)], agent="worker")
    assert "<summary>\ncustom for worker, last asked: water it\n</summary>" in texts_of(custom)


def test_a_turn_compacted_midway_continues_with_its_rule():
    director = scenario("""
        [[agents.manager.rules]]
        when = "earlier"
        steps = [{ text = "earlier reply" }]

        [[agents.manager.rules]]
        when = "ask"
        steps = [{ tool = "lookup" }, { text = "after: {{result}}" }]
    """)
    # The CLI merges the turn's prompt into the summary request, then drops it from the history.
    compaction = [user("earlier"), {"role": "assistant", "content": []}, user("ask it\n", SUMMARY_PROMPT)]
    assert reply(director, compaction, session="s9").rule == "compaction"
    continued = [user(CONTINUATION), system(), {"role": "assistant", "content": []}, results("42")]
    assert texts_of(reply(director, continued, session="s9")) == "after: 42"
    # When the overflow hits the turn's first request, the prompt follows the summary instead.
    assert tool_of(reply(director, [user(CONTINUATION, "ask again")], session="new"))[0] == "mcp__hyperhive__lookup"


def test_demo_scenario_hands_the_operator_message_to_worker():
    director = Director(load_demo_scenario())
    prompt = (
        "1 new message. Reply with the send tool; to reach the human, send to 'operator'.\n\n"
        "--- message 12 from operator (text) ---\nplease tidy the notes"
    )
    messages = [user(prompt)]
    assert tool_of(reply(director, messages)) == (
        "mcp__hyperhive__send",
        {"to": "worker", "body": "The operator asks: please tidy the notes"},
    )
    messages.append(results("sent message 13 to worker"))
    tell_operator = tool_of(reply(director, messages))[1]
    assert tell_operator["to"] == "operator"
    assert "sent message 13 to worker" in tell_operator["body"]
    messages.append(results("sent message 14 to operator"))
    assert reply(director, messages).reply.stop_reason == "end_turn"


def test_the_demo_asks_the_operator_and_thanks_for_the_answer():
    director = Director(load_demo_scenario())
    prompt = "1 new message.\n\n--- message 4 from operator (text) ---\nplease ask me something"
    decision = director.decide("manager", {"messages": [{"role": "user", "content": prompt}]})
    assert decision.rule == "ask the operator"
    event = (
        "1 new message.\n\n--- message 9 from hive (event) ---\n"
        "hive event: operator_answered\nid: 1\nquestion: Which colour?\nanswer: mauve\nstatus: answered"
    )
    decision = director.decide("manager", {"messages": [{"role": "user", "content": event}]})
    assert decision.rule == "operator answered"
    assert "mauve" in str(decision.describe())

    worker_prompt = "1 new message.\n\n--- message 13 from manager (text) ---\nThe operator asks: please tidy the notes"
    answer = tool_of(reply(director, [user(worker_prompt)], agent="worker"))[1]
    assert answer["to"] == "operator"
    assert "The manager asked me: The operator asks: please tidy the notes" in answer["body"]


# -- the HTTP server ------------------------------------------------------------------


@pytest.fixture
def serve(nursery):
    """Start a rehearsal server for a scenario given as TOML text."""

    async def start(text: str, **options: Any) -> RehearsalServer:
        server = RehearsalServer(parse_scenario(textwrap.dedent(text), "test.toml"), **options)
        return await nursery.start(server.serve)

    return start


async def http(url: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request on a fresh connection: status and body."""
    address = urlsplit(url)
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    connection = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    async with stream:
        headers = [("host", address.netloc), ("content-length", str(len(data)))]
        await stream.send_all(connection.send(h11.Request(method=method, target=path, headers=headers)))
        await stream.send_all(connection.send(h11.Data(data=data)) + connection.send(h11.EndOfMessage()))
        status, received = 0, b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, received


def sse(data: bytes) -> list[dict[str, Any]]:
    events = []
    for chunk in data.decode().strip().split("\n\n"):
        kind, payload = chunk.split("\n")
        event = json.loads(payload.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        events.append(event)
    return events


TOOL_SCENARIO = """
    [[agents.manager.rules]]
    name = "call"
    steps = [{ text = "calling", tool = "send", input = { to = "worker", body = "a longer body that spans deltas" } }]
"""


async def test_side_routes_answer_what_the_cli_probes(serve):
    server = await serve(TOOL_SCENARIO)
    assert await http(server.url, "HEAD", "/") == (200, b"")
    assert await http(server.url, "HEAD", "/agents/manager/api/hello") == (200, b"")
    status, body = await http(server.url, "GET", "/v1/models")
    assert status == 200
    assert "claude-haiku-5-5" in [model["id"] for model in json.loads(body)["data"]]
    assert json.loads((await http(server.url, "GET", "/v1/models/claude-x"))[1])["id"] == "claude-x"
    status, body = await http(
        server.url, "POST", "/agents/manager/v1/messages/count_tokens?beta=true", {"a": "b" * 400}
    )
    assert status == 200
    assert json.loads(body)["input_tokens"] > 100
    status, body = await http(server.url, "GET", "/nope")
    assert status == 404
    assert "no route for GET /nope; it serves POST /v1/messages" in json.loads(body)["error"]["message"]
    status, body = await http(server.url, "POST", "/v1/messages", b"{not json")
    assert (status, json.loads(body)["error"]["type"]) == (400, "invalid_request_error")
    assert [(r.agent, r.method, r.path, r.status) for r in server.requests[:2]] == [
        (None, "HEAD", "/", 200),
        ("manager", "HEAD", "/agents/manager/api/hello", 200),
    ]


async def test_messages_stream_as_server_sent_events(serve):
    server = await serve(TOOL_SCENARIO)
    request = {"model": "claude-haiku-5-5", "stream": True, "messages": [user("hi"), system()]}
    status, body = await http(server.url, "POST", "/agents/manager/v1/messages?beta=true", request)
    assert status == 200
    events = sse(body)
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0]["message"]["model"] == "claude-haiku-5-5"
    assert events[0]["message"]["usage"]["input_tokens"] > 0
    starts = [event["content_block"] for event in events if event["type"] == "content_block_start"]
    assert [block["type"] for block in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "mcp__hyperhive__send"
    deltas = [event["delta"] for event in events if event["type"] == "content_block_delta"]
    text = "".join(delta.get("text", "") for delta in deltas)
    tool_json = "".join(delta.get("partial_json", "") for delta in deltas)
    assert len([delta for delta in deltas if delta["type"] == "input_json_delta"]) > 1
    assert (text, json.loads(tool_json)) == ("calling", {"to": "worker", "body": "a longer body that spans deltas"})
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["output_tokens"] > 0
    (recorded,) = server.requests
    assert (recorded.agent, recorded.path, recorded.rule, recorded.step) == (
        "manager",
        "/agents/manager/v1/messages",
        "call",
        0,
    )
    assert recorded.body == request


async def test_messages_without_stream_come_back_whole(serve):
    server = await serve(TOOL_SCENARIO)
    status, body = await http(server.url, "POST", "/agents/manager/v1/messages", {"messages": [user("hi")]})
    message = json.loads(body)
    assert (status, message["type"], message["stop_reason"]) == (200, "message", "tool_use")
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["id"].startswith("toolu_")


async def test_wait_for_request_wakes_on_a_request_before_its_delayed_reply(serve, nursery):
    server = await serve("[[agents.worker.rules]]\nname = 'slow'\nsteps = [{ text = 'late', delay = 60 }]")
    body = {"messages": [user("x")]}
    nursery.start_soon(http, server.url, "POST", "/agents/worker/v1/messages", body)
    with trio.fail_after(5):
        first = await server.wait_for_request(lambda request: request.agent == "worker")
        assert (first.seq, first.reply) == (1, "rule 'slow' step 0 → 'late'")
        seen = server.request_count
        nursery.start_soon(http, server.url, "POST", "/agents/worker/v1/messages", body)
        assert (await server.wait_for_request(after=seen)).seq == 2


async def open_request(url: str, path: str, body: Any) -> tuple[trio.SocketStream, h11.Connection]:
    """Send one request; the caller reads the answer (or its absence) off the stream."""
    address = urlsplit(url)
    data = json.dumps(body).encode()
    connection = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    headers = [("host", address.netloc), ("content-length", str(len(data)))]
    await stream.send_all(connection.send(h11.Request(method="POST", target=path, headers=headers)))
    await stream.send_all(connection.send(h11.Data(data=data)) + connection.send(h11.EndOfMessage()))
    return stream, connection


async def received_until_quiet(stream: trio.SocketStream, quiet: float = 0.3) -> tuple[bytes, bool]:
    """What arrives until nothing more does for ``quiet`` seconds, and whether the server closed."""
    received = b""
    while True:
        with trio.move_on_after(quiet):
            chunk = await stream.receive_some()
            if not chunk:
                return received, True
            received += chunk
            continue
        return received, False


def faulty(faults: str) -> str:
    """A scenario whose one reply, long enough for several deltas, comes after ``faults``."""
    text = "a reply long enough to take several deltas of the stream"
    return f'[[agents.manager.rules]]\nsteps = [{{ text = "{text}", faults = {faults} }}]'


STREAMED = {"model": "claude-haiku-5-5", "stream": True, "messages": [user("hi")]}


async def test_a_hang_reads_the_request_and_answers_nothing_until_the_client_leaves(serve):
    server = await serve(faulty('["hang"]'))
    stream, _ = await open_request(server.url, "/agents/manager/v1/messages", STREAMED)
    with trio.fail_after(5):
        assert await received_until_quiet(stream) == (b"", False)
        (request,) = server.requests
        assert (request.status, request.reply) == (0, "rule 'agents.manager.rules[0]' step 0 → hang")
        await stream.aclose()
        # The connection is let go: the next request is served as usual.
        assert (await http(server.url, "POST", "/agents/manager/v1/messages", STREAMED))[0] == 200


async def test_a_stall_starts_the_stream_then_sends_nothing_and_a_drop_breaks_it_off(serve):
    server = await serve(faulty('["stall", "drop"]'))
    for how, closed in (("stall", False), ("drop", True)):
        stream, connection = await open_request(server.url, "/agents/manager/v1/messages", STREAMED)
        with trio.fail_after(5):
            data, server_closed = await received_until_quiet(stream)
        assert server_closed is closed, how
        connection.receive_data(data)
        assert connection.next_event().status_code == 200
        body = b""
        while isinstance(event := connection.next_event(), h11.Data):
            body += event.data
        assert event is h11.NEED_DATA  # the response never ends
        kinds = [event["type"] for event in sse(body)]
        assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta"], how
        await stream.aclose()
    assert [request.reply.split(" → ")[1] for request in server.requests] == ["stall", "drop"]


async def test_stream_seconds_spreads_the_reply_over_time(serve):
    server = await serve('[[agents.manager.rules]]\nsteps = [{ text = "slowly now", stream_seconds = 2 }]')
    stream, _ = await open_request(server.url, "/agents/manager/v1/messages", STREAMED)
    with trio.fail_after(10):
        first = b""
        while b"message_start" not in first:  # the headers may come in a chunk of their own
            first += await stream.receive_some()
        with trio.move_on_after(1) as early:  # the pace only ever waits: never done this soon
            while b"message_stop" not in first:
                first += await stream.receive_some()
        assert early.cancelled_caught
        while b"message_stop" not in first:
            first += await stream.receive_some()
    await stream.aclose()


async def test_requests_are_logged_as_json_lines_and_kept_bounded(serve, tmp_path):
    log_path = tmp_path / "requests.jsonl"
    server = await serve(TOOL_SCENARIO, log_path=log_path, keep=2)
    for _ in range(3):
        await http(server.url, "POST", "/agents/manager/v1/messages", {"messages": [user("hi")]})
    assert [request.seq for request in server.requests] == [2, 3]
    assert server.request_count == 3
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(line["seq"], line["agent"], line["rule"], line["status"]) for line in lines] == [
        (1, "manager", "call", 200),
        (2, "manager", "call", 200),
        (3, "manager", "call", 200),
    ]


async def test_a_taken_port_is_a_clear_error(serve, nursery):
    server = await serve(TOOL_SCENARIO)
    second = RehearsalServer(server.director.scenario, port=server.port)
    with pytest.raises(RehearsalError, match=rf"cannot listen on 127.0.0.1:{server.port}: .*; choose another port"):
        await nursery.start(second.serve)


def test_agent_urls_and_environment():
    assert base_url_for("http://127.0.0.1:9/", "manager") == "http://127.0.0.1:9/agents/manager"
    env = env_for("http://127.0.0.1:9", "worker")
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9/agents/worker"
    assert env["ANTHROPIC_API_KEY"] == "rehearsal"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    with pytest.raises(InvalidName):
        base_url_for("http://127.0.0.1:9", "../etc")


def test_rehearse_command_reports_a_bad_scenario(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[agents.manager.rules]]\nsteps = [{ txt = 'x' }]\n")
    result = CliRunner().invoke(cli, ["rehearse", str(bad)])
    assert result.exit_code == 1
    assert f"Error: {bad}: agents.manager.rules[0].steps[0].txt: unknown key" in result.output


class Lines:
    """Newline-separated lines from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


async def test_rehearse_command_serves_the_demo_and_logs_each_request(hyperhive, clean_env, tmp_path):
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [hyperhive, "rehearse", "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, env=clean_env
        )
        try:
            with trio.fail_after(20):
                first = (await Lines(process.stdout).next() or b"").decode()
                url = first.rsplit(" at ", 1)[-1]
                assert first.startswith(
                    "rehearsal model serving hyperhive_core/scenarios/demo.toml at http://127.0.0.1:"
                )
                prompt = "--- message 1 from operator (text) ---\nhi"
                request = {"messages": [user(prompt)]}
                status, body = await http(url, "POST", "/agents/manager/v1/messages", request)
                assert (status, json.loads(body)["content"][1]["input"]["to"]) == (200, "worker")
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
    assert process.returncode == 0
    log = stderr_path.read_text()
    assert "manager POST /agents/manager/v1/messages: rule 'delegate to worker' step 0 → " in log


# -- the real Claude Code CLI ---------------------------------------------------------

MCP_SERVER = """
import json, sys

# A stdio MCP server with one tool, lookup(key); each call's arguments are logged to argv[1].
TOOL = {"name": "lookup", "description": "Look a key up.",
        "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method, params = message.get("method"), message.get("params", {})
    reply = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
    if method == "initialize":
        reply["result"] = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                           "serverInfo": {"name": "hyperhive", "version": "0"}}
    elif method == "tools/list":
        reply["result"] = {"tools": [TOOL]}
    elif method == "tools/call":
        with open(sys.argv[1], "a") as log:
            log.write(json.dumps(params["arguments"]) + "\\n")
        text = json.dumps({"id": 42, "key": params["arguments"]["key"]})
        reply["result"] = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method != "ping":
        del reply["result"]
        reply["error"] = {"code": -32601, "message": f"no method {method}"}
    print(json.dumps(reply), flush=True)
"""


class ClaudeSession:
    """A persistent ``claude -p`` in stream-json mode, as the harness runs it."""

    def __init__(self, process: trio.Process, stderr_path: Path) -> None:
        self.process = process
        self.stdout = Lines(process.stdout)
        self.stderr_path = stderr_path

    async def turn(self, text: str) -> list[dict[str, Any]]:
        """Send one user message; return the turn's events, the result last."""
        line = json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n"
        await self.process.stdin.send_all(line.encode())
        events = []
        while (raw := await self.stdout.next()) is not None:
            events.append(json.loads(raw))
            if events[-1]["type"] == "result":
                return events
        raise AssertionError(f"claude exited mid-turn: {self.stderr_path.read_text()[-2000:]}")


@asynccontextmanager
async def claude(
    server: RehearsalServer, tmp_path: Path, *, tools: tuple[str, ...] = (), env: dict[str, str] | None = None
):
    """The pinned CLI as the manager agent on ``server``, with the test MCP server's tools allowed."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    argv = [str(CLAUDE), "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
    argv += ["--model", "haiku", "--tools", "", "--strict-mcp-config"]
    if tools:
        (tmp_path / "mcp_server.py").write_text(MCP_SERVER)
        config = {"command": sys.executable, "args": [str(tmp_path / "mcp_server.py"), str(tmp_path / "calls.jsonl")]}
        (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"hyperhive": {"type": "stdio", **config}}}))
        argv += ["--mcp-config", str(tmp_path / "mcp.json")]
        argv += ["--allowedTools", ",".join(f"mcp__hyperhive__{tool}" for tool in tools)]
    full_env = {"PATH": os.environ["PATH"], "HOME": str(home), "ENABLE_TOOL_SEARCH": "false"}
    full_env |= {"CLAUDE_CODE_MAX_RETRIES": "0", **server.env_for("manager"), **(env or {})}
    stderr_path = tmp_path / "claude.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=full_env, cwd=work
        )
        try:
            yield ClaudeSession(process, stderr_path)
        finally:
            await process.stdin.aclose()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@needs_claude
async def test_claude_code_gets_a_streamed_text_reply(serve, tmp_path):
    server = await serve(
        '[[agents.manager.rules]]\nname = "greet"\nwhen = "hello"\nsteps = [{ text = "Hello, operator." }]'
    )
    with trio.fail_after(60):
        async with claude(server, tmp_path) as session:
            events = await session.turn("hello there")
    result = events[-1]
    assert (result["is_error"], result["result"]) == (False, "Hello, operator.")
    assert 0 < result["total_cost_usd"] < 0.05
    (request,) = [request for request in server.requests if request.method == "POST"]
    assert (request.agent, request.path, request.rule, request.step) == (
        "manager",
        "/agents/manager/v1/messages",
        "greet",
        0,
    )
    assert request.body["stream"] is True


@needs_claude
async def test_claude_code_calls_a_tool_and_a_later_step_uses_its_result(serve, tmp_path):
    server = await serve("""
        [[agents.manager.rules]]
        name = "lookup"
        when_regex = 'look up (?P<key>\\w+)'
        steps = [
          { text = "Looking it up.", tool = "lookup", input = { key = "{{match.key}}" } },
          { text = "{{results[0].json.key}} has id {{result.json.id}}." },
        ]
    """)
    with trio.fail_after(60):
        async with claude(server, tmp_path, tools=("lookup",)) as session:
            events = await session.turn("please look up apples")
    assert events[-1]["result"] == "apples has id 42."
    assert [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()] == [{"key": "apples"}]
    assert [(request.rule, request.step) for request in server.requests if request.method == "POST"] == [
        ("lookup", 0),
        ("lookup", 1),
    ]


@needs_claude
async def test_claude_code_retries_a_server_error_then_succeeds(serve, tmp_path):
    server = await serve(
        '[[agents.manager.rules]]\nname = "flaky"\nsteps = [{ text = "recovered", status = 500, times = 2 }]'
    )
    with trio.fail_after(60):
        async with claude(server, tmp_path, env={"CLAUDE_CODE_MAX_RETRIES": "3"}) as session:
            events = await session.turn("hi")
    retries = [event for event in events if event.get("subtype") == "api_retry"]
    assert [(retry["error_status"], retry["error"]) for retry in retries] == [(500, "server_error")] * 2
    assert (events[-1]["is_error"], events[-1]["result"]) == (False, "recovered")
    assert [request.status for request in server.requests if request.rule == "flaky"] == [500, 500, 200]


@needs_claude
async def test_claude_code_reports_a_prompt_too_long_on_the_first_exchange(serve, tmp_path):
    server = await serve('[[agents.manager.rules]]\nname = "big"\nsteps = [{ text = "fits now", status = 400 }]')
    with trio.fail_after(60):
        async with claude(server, tmp_path) as session:
            failed = (await session.turn("hi"))[-1]
            retried = (await session.turn("hi"))[-1]
    assert (failed["is_error"], failed["terminal_reason"], failed["api_error_status"]) == (True, "prompt_too_long", 400)
    assert (retried["is_error"], retried["result"]) == (False, "fits now")
    assert [(request.rule, request.status) for request in server.requests] == [("big", 400), ("big", 200)]


@needs_claude
async def test_claude_code_compacts_midway_through_a_turn_and_carries_on(serve, tmp_path):
    server = await serve("""
        [[agents.manager.rules]]
        name = "small talk"
        when = "first"
        steps = [{ text = "noted" }]

        [[agents.manager.rules]]
        name = "big"
        when = "look up"
        steps = [
          { tool = "lookup", input = { key = "pears" } },
          { text = "still here: {{result.json.id}}", status = 400 },
        ]
    """)
    with trio.fail_after(60):
        async with claude(server, tmp_path, tools=("lookup",)) as session:
            await session.turn("first things first")
            events = await session.turn("look up pears")
    assert (events[-1]["is_error"], events[-1]["result"]) == (False, "still here: 42")
    assert any(event.get("subtype") == "compact_boundary" for event in events)
    rules = [(request.rule, request.step, request.status) for request in server.requests if request.method == "POST"]
    assert rules == [
        ("small talk", 0, 200),
        ("big", 0, 200),
        ("big", 1, 400),
        ("compaction", None, 200),
        ("big", 1, 200),
    ]
