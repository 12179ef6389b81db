"""End to end on the real Claude Code CLI and the rehearsal model: one piece of work is one trace.

The operator asks the manager, which hands parts to two workers; one worker reports
back, and the manager asks the operator a question. The daemon stops while the
question waits, and the answer comes after the restart: still one trace, with
every span where it belongs.
"""

from __future__ import annotations

import hyperhive_questions
import hyperhive_tracing
import pytest
import trio
from hyperhive_tracing.store import SpanRecord, recent_traces, trace_of_turn, trace_spans

from hyperhive_core.testing import Script, host_request, needs_claude, next_event, running_hive

SEND = "tool mcp__hyperhive__send"
ASK = "tool mcp__hyperhive__ask_operator"

SCRIPT = Script()
SCRIPT.on("manager", "build the release").call("send", {"to": "worker-a", "body": "part A"}).call(
    "send", {"to": "worker-b", "body": "part B"}
).reply("handed out")
SCRIPT.on("worker-a", "part A").call("send", {"to": "manager", "body": "A is done"}).reply("reported")
SCRIPT.on("worker-b", "part B").call("send", {"to": "operator", "body": "B is done"}).reply("told the operator")
SCRIPT.on("manager", "A is done").call("ask_operator", {"question": "Ship it?"}).reply("asked")
SCRIPT.on("manager", "operator_answered").reply("shipping")
SCRIPT.otherwise("nothing to do")


def tree(spans: list[SpanRecord], parent: str | None = None) -> list[tuple]:
    """The spans under ``parent`` as nested ``(kind, agent, name, children)``, each level sorted."""
    return sorted(
        (span.kind, span.agent, span.name, tree(spans, span.span_id)) for span in spans if span.parent_id == parent
    )


MODEL = "model haiku"  # every agent's, in the test kit's config


def turn(agent: str, *children: tuple) -> tuple:
    """A finished turn: its tools and sends, and the model span every turn has."""
    return ("turn", agent, f"turn {agent}", sorted([*children, ("model", agent, MODEL, [])]))


def tool(agent: str, name: str) -> tuple:
    return ("tool", agent, name, [])


EXPECTED = [
    (
        "message",
        "operator",
        "message operator→manager",
        [
            turn(
                "manager",
                tool("manager", SEND),
                tool("manager", SEND),
                (
                    "send",
                    "manager",
                    "send manager→worker-a",
                    [
                        turn(
                            "worker-a",
                            tool("worker-a", SEND),
                            (
                                "send",
                                "worker-a",
                                "send worker-a→manager",
                                [
                                    turn(
                                        "manager",
                                        tool("manager", ASK),
                                        ("question", "manager", "question", [turn("manager")]),
                                    )
                                ],
                            ),
                        )
                    ],
                ),
                (
                    "send",
                    "manager",
                    "send manager→worker-b",
                    [turn("worker-b", tool("worker-b", SEND), ("send", "worker-b", "send worker-b→operator", []))],
                ),
            )
        ],
    )
]


async def settled(hive, trace_id: str, count: int, still_open: list[str] = ()) -> list[SpanRecord]:
    """The trace's ``count`` spans once stored, open only those of kinds ``still_open`` (the writer lags a moment)."""
    while True:
        spans = await trace_spans(hive, trace_id)
        if len(spans) >= count and sorted(span.kind for span in spans if span.open) == list(still_open):
            return spans
        await trio.sleep(0.05)


@pytest.mark.slow
@needs_claude
async def test_the_operators_request_is_one_trace_across_agents_a_question_and_a_restart(make_pm, tmp_path):
    pm = make_pm(questions=hyperhive_questions, tracing=hyperhive_tracing)
    agents = {"worker-a": {}, "worker-b": {}}
    async with running_hive(tmp_path, pm, SCRIPT, agents=agents) as hive:
        with trio.fail_after(120):
            await hive.broker.send("operator", "manager", "build the release")
            asked = await next_event(hive, "manager", "questions.asked")
            # Everything else of the work is done before the daemon stops: only the question waits.
            await next_event(hive, "worker-b", "turn_end")
            await next_event(hive, "manager", "turn_end", after=asked.id)
            [summary] = await recent_traces(hive)
            assert summary.open  # the question
            before = await settled(hive, summary.trace_id, 19, still_open=["question"])
            assert f"model {hive.agents.get('manager').status.model}" == MODEL
    async with running_hive(tmp_path, pm, SCRIPT, agents=agents) as hive:
        with trio.fail_after(120):
            answered = await host_request(hive, "answer-question", id=asked.data["id"], answer="yes")
            assert answered["status"] == "answered"
            end = await next_event(hive, "manager", "turn_end", lambda event: event.id > asked.id)
            assert end.data["exit"] == "ok"
            spans = await settled(hive, summary.trace_id, 21)
            traces = await recent_traces(hive)
            # Each turn is found by its key: the id of the first message it handled (its turn_start's first).
            last = await next_event(hive, "manager", "turn_start", lambda event: event.id > asked.id)
            assert await trace_of_turn(hive, "manager", last.data["message_ids"][0]) == summary.trace_id
    assert [trace.trace_id for trace in traces] == [summary.trace_id]  # one piece of work, one trace
    assert tree(spans) == EXPECTED
    [question] = [span for span in spans if span.kind == "question"]
    assert question.waits_on_person
    assert question.status == "ok"
    assert question.attributes["outcome"] == "answered"
    # The question's span outlived the restart: the same span, closed by the second run.
    assert question.span_id in {span.span_id for span in before}
    assert all(span.trace_id == summary.trace_id for span in spans)
    assert traces[0].agents == ["manager", "operator", "worker-a", "worker-b"]
    assert not traces[0].open
