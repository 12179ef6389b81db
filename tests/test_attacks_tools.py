"""Attacks through the hive's tools: arguments an agent chooses, sent as its own socket would send them."""

from __future__ import annotations

import hyperhive_questions
import trio
from hyperhive_questions.questions import TABLE

from hyperhive_core.testing import call_tool, needs_claude, running_hive

pytestmark = needs_claude

SCENARIO = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""


async def test_an_oversized_request_description_is_refused_before_it_is_stored(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        # Each pending spawn is another name: without a bound, a few hundred fill the host's disk.
        text, is_error = await call_tool(hive, "manager", "request_spawn", name="filler", description="x" * 3_000_000)
        assert is_error
        assert "description is 3000000 characters, over the 10000-character limit" in text
        assert await hive.approvals.list() == []
        text, is_error = await call_tool(hive, "manager", "request_spawn", name="scout", description="x" * 10_000)
        assert not is_error, text


async def test_an_agent_sending_to_the_operator_in_a_loop_cannot_fill_the_disk(make_pm, tmp_path):
    # Nobody acks the operator's messages: without a bound they would all stay, 64 KiB each.
    async with running_hive(tmp_path, make_pm(), SCENARIO, broker={"retention_per_recipient": 20}) as hive:
        await hive.spawn("scout")
        for number in range(60):
            text, is_error = await call_tool(hive, "scout", "send", to="operator", body=f"{number} " + "x" * 60_000)
            assert not is_error, text
        kept = await hive.store.read(
            lambda db: [row["body"].split()[0] for row in db.query("SELECT body FROM messages ORDER BY id")]
        )
        assert kept == [str(number) for number in range(40, 60)]
        assert [message.body.split()[0] for message in await hive.broker.recent_for("operator", 3)] == [
            "59",
            "58",
            "57",
        ]


async def test_the_manager_cannot_pile_up_requests_or_drafts(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        for number in range(50):
            text, is_error = await call_tool(hive, "manager", "request_spawn", name=f"a{number}", description="more")
            assert not is_error, text
        text, is_error = await call_tool(hive, "manager", "request_spawn", name="a50", description="more")
        assert is_error
        assert "50 requests already wait for the operator, the most there may be" in text
        assert len(await hive.approvals.list("pending")) == 50

        for number in range(20):
            text, is_error = await call_tool(hive, "manager", "request_spawn_draft", name=f"d{number}")
            assert not is_error, text
        text, is_error = await call_tool(hive, "manager", "request_spawn_draft", name="d20")
        assert is_error
        assert "there are 20 drafts already, the most there may be" in text
        assert not hive.repos.proposed("d20").exists()


async def test_the_manager_cannot_pile_up_questions(make_pm, tmp_path, monkeypatch):
    monkeypatch.setattr(hyperhive_questions.questions, "KEEP_RESOLVED", 3)
    async with running_hive(tmp_path, make_pm(questions=hyperhive_questions), SCENARIO) as hive:
        asked = []
        for number in range(20):
            text, is_error = await call_tool(hive, "manager", "ask_operator", question=f"q{number} " + "x" * 3000)
            assert not is_error, text
            asked.append(int(text.split()[1]))
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="one more")
        assert is_error
        assert "20 of your questions already wait for the operator, the most there may be" in text

        questions = hive.stash[hyperhive_questions.QUESTIONS]
        for question in asked:
            await questions.cancel(question)
        with trio.fail_after(30):  # each answer reaches the manager's inbox
            while await hive.store.read(lambda db: db.table(TABLE).count_where("notified_at IS NULL")):
                await trio.sleep(0.05)
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="one more")
        assert not is_error, text
        kept = await hive.store.read(lambda db: [row["question"] for row in db.table(TABLE).rows_where(order_by="id")])
        assert [question.split()[0] for question in kept] == ["q17", "q18", "q19", "one"]
