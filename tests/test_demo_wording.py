"""What the offline demo says to the operator reads right: no doubled punctuation, and a
question or request that ended without an answer is not thanked for as one."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import hyperhive_questions
import pytest
import trio

from hyperhive_core.harness import render_event
from hyperhive_core.rehearsal import Director, load_demo_scenario
from hyperhive_core.rehearsal.wire import Message
from hyperhive_core.testing import host_request, needs_claude, next_event, running_hive

# A sentence's end followed by more of the same: "it.).", "it..", "it.;".
DOUBLED = re.compile(r"[.!?;:]\)?[.!?;:]")
# What the tools answer, as core and the questions plugin word it.
RESULTS = {
    "ask_operator": "question 3 is with the operator, open until 2026-12-07T10:00:00Z. "
    "The answer will arrive as an operator_answered hive event with id 3; don't wait for it.",
    "request_spawn": "approval 4 (spawn scout) is waiting for the operator; "
    "the answer arrives in your inbox as an approval_resolved event.",
    "send": "sent message 12 to worker",
}


def prompt(sender: str, kind: str, body: str) -> str:
    return f"1 new message.\n\n--- message 9 from {sender} ({kind}) ---\n{body}"


def event(name: str, **fields: object) -> str:
    """A hive event as the manager's turn reads it."""
    return prompt("hive", "event", render_event(json.dumps({"event": name, **fields})))


def operator_bodies(agent: str, text: str) -> list[str]:
    """Play one turn of the demo for ``agent``; what it sends the operator."""
    director = Director(load_demo_scenario())
    messages: list[dict[str, object]] = [{"role": "user", "content": text}]
    sent = []
    for _ in range(10):  # a demo turn has a few steps
        reply = director.decide(agent, {"messages": messages}).reply
        assert isinstance(reply, Message)
        messages.append({"role": "assistant", "content": list(reply.content)})
        calls = [block for block in reply.content if block["type"] == "tool_use"]
        if not calls:
            return sent
        (call,) = calls
        tool = call["name"].removeprefix("mcp__hyperhive__")
        if tool == "send" and call["input"]["to"] == "operator":
            sent.append(call["input"]["body"])
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": RESULTS[tool]}
        messages.append({"role": "user", "content": [result]})
    raise AssertionError("the demo turn did not end")


TURNS = [
    ("manager", prompt("operator", "text", "please ask me something")),
    ("manager", prompt("operator", "text", "spawn scout please")),
    ("manager", prompt("operator", "text", "tidy the notes")),
    ("manager", event("operator_answered", id=3, question="Which colour?", answer="mauve", status="answered")),
    ("manager", event("operator_answered", id=3, question="Which colour?", answer="[cancelled]", status="cancelled")),
    ("manager", event("operator_answered", id=3, question="Which colour?", answer="[expired]", status="expired")),
    *[
        ("manager", event("approval_resolved", id=4, agent="scout", kind="spawn", status=status, note="n"))
        for status in ("approved", "denied", "cancelled", "failed")
    ],
    ("worker", prompt("manager", "text", "The operator asks: tidy the notes")),
]


@pytest.mark.parametrize(("agent", "text"), TURNS)
def test_no_demo_message_doubles_its_punctuation(agent, text):
    (body,) = operator_bodies(agent, text)
    assert not DOUBLED.search(body), body


@pytest.mark.parametrize("said", ["tidy the notes", "tidy the notes.", "can you tidy the notes?"])
def test_the_operators_words_end_what_is_quoted_back(said):
    """Quoted at the end, the operator's own words need no punctuation of the demo's after them."""
    (body,) = operator_bodies("worker", prompt("manager", "text", f"The operator asks: {said}"))
    assert body.endswith(f"The manager asked me: The operator asks: {said}")


@pytest.mark.parametrize(
    ("status", "says"), [("cancelled", "You withdrew question 3"), ("expired", "expired unanswered")]
)
def test_a_question_that_was_not_answered_is_not_thanked_for(status, says):
    (body,) = operator_bodies(
        "manager", event("operator_answered", id=3, question="Which colour?", answer=f"[{status}]", status=status)
    )
    assert says in body
    assert "Thanks" not in body
    assert "reached me" not in body
    assert f"[{status}]" not in body


@pytest.mark.parametrize(
    ("status", "says"), [("cancelled", "was cancelled before"), ("failed", "carrying it out failed")]
)
def test_a_request_that_was_not_answered_is_not_called_an_answer(status, says):
    (body,) = operator_bodies("manager", event("approval_resolved", id=4, agent="scout", kind="spawn", status=status))
    assert says in body
    assert "Your answer" not in body


@needs_claude
async def test_the_demo_says_a_cancelled_question_was_withdrawn(make_pm, tmp_path):
    """The whole way: the operator asks for a question, the manager asks it, the operator cancels it."""
    demo = (files("hyperhive_core") / "scenarios" / "demo.toml").read_text()
    async with running_hive(tmp_path, make_pm(questions=hyperhive_questions), demo) as hive:
        await host_request(hive, "send", to="manager", body="please ask me something", idempotency_key="ask")
        with trio.fail_after(120):
            asked = await next_event(hive, "manager", "questions.asked")
            told = await next_event(
                hive, "manager", "message_sent", lambda each: each.data["to"] == "operator", after=asked.id
            )
        await host_request(hive, "cancel-question", id=asked.data["id"])
        with trio.fail_after(120):
            withdrawn = await next_event(
                hive, "manager", "message_sent", lambda each: each.data["to"] == "operator", after=told.id
            )
        bodies = {message.id: message.body for message in await hive.broker.recent_for("operator", 10)}
        assert not DOUBLED.search(bodies[told.data["id"]]), bodies[told.data["id"]]
        assert bodies[withdrawn.data["id"]] == (
            f"You withdrew question {asked.data['id']}, so I'll carry on without an answer."
        )
