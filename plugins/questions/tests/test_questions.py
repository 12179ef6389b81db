"""Questions: asking, answering, cancelling, expiry (also across restarts), and every bad input."""

from __future__ import annotations

import json
import subprocess

import hyperhive_questions
import pytest
import trio

from hyperhive_core import ConfigError, HyperhiveError, hookimpl
from hyperhive_core.testing import (
    HeldClock,
    call_tool,
    host_request,
    needs_claude,
    next_event,
    operator_reply,
    running_hive,
)

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'


class HoldTurns:
    """Stops every turn as it starts: these tests look at what wakes the manager, not at Claude Code."""

    @hookimpl
    async def on_turn_start(self, hive, agent, turn):
        await trio.sleep_forever()


@pytest.fixture
def pm(make_pm):
    return make_pm(questions=hyperhive_questions, hold=HoldTurns())


async def ask(hive, **arguments):
    text, is_error = await call_tool(hive, "manager", "ask_operator", **arguments)
    assert not is_error, text
    return int(text.split()[1])  # "question 3 is with the operator, ..."


async def events_to_manager(hive):
    """The operator_answered events in the manager's inbox, oldest first."""
    messages = reversed(await hive.broker.recent_for("manager", 50))
    return [json.loads(m.body) for m in messages if m.sender == "hive" and '"operator_answered"' in m.body]


async def test_cancel_resolves_the_question_and_wakes_the_manager(pm, tmp_path):
    async with running_hive(tmp_path, pm, QUIET) as hive:
        with trio.fail_after(30):
            question = await ask(hive, question="Deploy on Friday?", options=["yes", "no"], ttl_seconds=600)
            pending = await host_request(hive, "questions")
            assert [(q["id"], q["status"], q["options"]) for q in pending] == [(question, "pending", ["yes", "no"])]
            cancelled = await host_request(hive, "cancel-question", id=question)
            assert (cancelled["status"], cancelled["answer"]) == ("cancelled", "[cancelled]")
            turn = await next_event(hive, "manager", "turn_start")
        assert await events_to_manager(hive) == [
            {
                "event": "operator_answered",
                "id": question,
                "question": "Deploy on Friday?",
                "answer": "[cancelled]",
                "status": "cancelled",
            }
        ]
        assert len(turn.data["message_ids"]) == 1
        assert await host_request(hive, "questions") == []
        everything = await host_request(hive, "questions", all=True)
        assert [(q["id"], q["status"]) for q in everything] == [(question, "cancelled")]
        resolved = next(e for e in await hive.events.history("manager") if e.type == "questions.resolved")
        assert resolved.data["status"] == "cancelled"


async def test_questions_expire_at_their_deadline(pm, tmp_path, autojump_clock):
    clock = HeldClock(autojump_clock)
    async with running_hive(tmp_path, pm, QUIET) as hive:
        with trio.fail_after(3600):
            later = await ask(hive, question="Later?", ttl_seconds=600)
            await clock.advance(100)
            sooner = await ask(hive, question="Sooner?", ttl_seconds=60)  # the reaper must wake for it
            await clock.advance(59)
            assert [q["id"] for q in await host_request(hive, "questions")] == [later, sooner]
            await clock.advance(2)
            await next_event(hive, "manager", "turn_start")
            assert [q["id"] for q in await host_request(hive, "questions")] == [later]
            assert [(e["id"], e["answer"], e["status"]) for e in await events_to_manager(hive)] == [
                (sooner, "[expired]", "expired")
            ]
            await clock.advance(440)
            await next_event(hive, "manager", "questions.resolved", lambda e: e.data["id"] == later)
            assert await host_request(hive, "questions") == []
            assert [e["id"] for e in await events_to_manager(hive)] == [sooner, later]


async def test_deadlines_survive_a_daemon_restart(pm, tmp_path, autojump_clock):
    clock = HeldClock(autojump_clock)
    with trio.fail_after(3600):
        async with running_hive(tmp_path, pm, QUIET) as hive:
            question = await ask(hive, question="Still there?", ttl_seconds=600)
            await clock.advance(300)
        async with running_hive(tmp_path, pm, QUIET) as hive:
            assert [q["id"] for q in await host_request(hive, "questions")] == [question]
            await clock.advance(590)  # the deadline is wall-clock: a restart does not give it more time
            assert await events_to_manager(hive) == []
            await clock.advance(11)
            await next_event(hive, "manager", "turn_start")
            assert [(e["id"], e["status"]) for e in await events_to_manager(hive)] == [(question, "expired")]


async def test_questions_overdue_at_start_expire_at_once(pm, tmp_path):
    with trio.fail_after(30):
        async with running_hive(tmp_path, pm, QUIET) as hive:
            question = await ask(hive, question="Quick?", ttl_seconds=1)
        await trio.sleep(1.1)  # the daemon is down past the deadline
        async with running_hive(tmp_path, pm, QUIET) as hive:
            turn = await next_event(hive, "manager", "turn_start")
            assert [(e["id"], e["status"]) for e in await events_to_manager(hive)] == [(question, "expired")]
            assert len(turn.data["message_ids"]) == 1
            assert await host_request(hive, "questions") == []


async def test_bad_questions_get_clear_errors(pm, tmp_path):
    USE_DEFAULT = "leave it out for the default of 60"
    sections = {"questions": {"max_chars": 20, "default_ttl_seconds": 60, "max_ttl_seconds": 3600}}
    async with running_hive(tmp_path, pm, QUIET, agents={"worker": {}}, **sections) as hive:
        cases = [
            ({"question": "  "}, "the question is empty; write what you want to know"),
            (
                {"question": "x" * 21},
                "the question is 21 characters, over the 20-character limit ([questions] max_chars); "
                "shorten it, or put the details in a file and refer to it",
            ),
            *(
                ({"question": "q", "ttl_seconds": ttl}, f"ttl_seconds must be at least 1, not {ttl}; {USE_DEFAULT}")
                for ttl in (0, -5)
            ),
            (
                {"question": "q", "ttl_seconds": 3601},
                "ttl_seconds 3601 is over the maximum of 3600 ([questions] max_ttl_seconds); ask for less",
            ),
            (
                {"question": "q", "options": []},
                "options is an empty list; give at least one option, or leave options out for a free-text answer",
            ),
            ({"question": "q", "options": ["a", " "]}, "an option is empty; every option needs some text"),
            ({"question": "q", "options": ["a", "a"]}, "option 'a' appears twice; give each option once"),
        ]
        for arguments, error in cases:
            assert await call_tool(hive, "manager", "ask_operator", **arguments) == (error, True)
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="q", options=[1])
        assert is_error
        assert text.startswith("invalid arguments for tool 'ask_operator': options.0: 1 is not of type 'string'")
        assert await call_tool(hive, "worker", "ask_operator", question="q") == (
            "tool 'ask_operator' is only for the manager role; you are 'agent'",
            True,
        )
        assert await host_request(hive, "questions") == []


async def test_bad_answers_get_clear_errors(pm, tmp_path):
    async with running_hive(tmp_path, pm, QUIET, questions={"max_chars": 20}) as hive:
        question = await ask(hive, question="Colour?", options=["amber", "mauve"])
        cases = [
            ({"id": 99, "answer": "x"}, "there is no question 99; `hyperhive questions` lists the pending ones"),
            ({"id": "three", "answer": "x"}, "a question id is a whole number, like 3; not 'three'"),
            ({"id": question, "answer": 7}, "the answer must be text, not 7"),
            ({"id": question, "answer": " "}, "the answer is empty; write an answer, or cancel the question"),
            (
                {"id": question, "answer": "y" * 21},
                "the answer is 21 characters, over the 20-character limit ([questions] max_chars); "
                "shorten it, or put the details in a file and refer to it",
            ),
            (
                {"id": question, "answer": "teal"},
                f"question {question} takes one of 'amber', 'mauve'; 'teal' is not one of them",
            ),
        ]
        for arguments, error in cases:
            with pytest.raises(HyperhiveError) as refused:
                await host_request(hive, "answer-question", **arguments)
            assert str(refused.value) == error
        answered = await host_request(hive, "answer-question", id=str(question), answer=" mauve ")
        assert (answered["status"], answered["answer"]) == ("answered", "mauve")
        for cmd, arguments in [("answer-question", {"answer": "amber"}), ("cancel-question", {})]:
            already = rf"^question {question} is already answered \(answer 'mauve' at "
            with pytest.raises(HyperhiveError, match=already):
                await host_request(hive, cmd, id=question, **arguments)
        with pytest.raises(HyperhiveError, match="^there is no question 42;"):
            await host_request(hive, "cancel-question", id=42)


@pytest.mark.parametrize(
    ("section", "key", "error"),
    [
        ({"max_chars": 0}, "max_chars", r"\[questions\] max_chars must be at least 1, not 0$"),
        (
            {"default_ttl_seconds": -1},
            "default_ttl_seconds",
            r"\[questions\] default_ttl_seconds must be at least 1, not -1$",
        ),
        (
            {"default_ttl_seconds": 100, "max_ttl_seconds": 50},
            "default_ttl_seconds",
            r"\[questions\] default_ttl_seconds \(100\) is over max_ttl_seconds \(50\); lower the default",
        ),
    ],
)
def test_bad_config_is_refused(make_config, pm, section, key, error):
    with pytest.raises(ConfigError, match=rf"hyperhive\.toml: {error}") as refused:
        make_config(pm, questions=section)
    assert refused.value.key == key


def test_answer_needs_text_or_cancel_but_not_both(hyperhive, clean_env):
    env = clean_env | {"HYPERHIVE_LOAD_PLUGINS": "questions"}

    def cli(*args):
        return subprocess.run([hyperhive, *args], capture_output=True, text=True, env=env, timeout=60)

    both = cli("answer", "3", "yes", "--cancel")
    assert both.returncode == 2
    assert "give either an answer TEXT or --cancel, not both" in both.stderr
    neither = cli("answer", "3")
    assert neither.returncode == 2
    assert "give the answer TEXT, or --cancel to withdraw the question" in neither.stderr


@needs_claude
@pytest.mark.slow
async def test_round_trip_the_manager_asks_the_operator_answers_the_manager_reads_it(
    make_pm, tmp_path, hyperhive, clean_env, asking_manager
):
    config = tmp_path / "hyperhive.toml"
    pm = make_pm(questions=hyperhive_questions)
    async with running_hive(tmp_path, pm, asking_manager) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')

        def cli(*args):
            env = clean_env | {"HYPERHIVE_LOAD_PLUGINS": "questions"}
            return subprocess.run([hyperhive, "-c", str(config), *args], capture_output=True, text=True, env=env)

        await hive.broker.send("operator", "manager", "please ask me something")
        with trio.fail_after(60):
            asked = await next_event(hive, "manager", "questions.asked")
            first = await next_event(hive, "manager", "turn_end")
        question = asked.data["id"]
        listed = await trio.to_thread.run_sync(cli, "questions")
        assert listed.stdout.splitlines() == [
            f"#{question} from manager (pending, expires in 23h 59m)",
            "    Which colour?",
            "    options: amber | mauve",
        ]
        wrong = await trio.to_thread.run_sync(cli, "answer", str(question), "teal")
        assert (wrong.returncode, wrong.stderr) == (
            1,
            f"Error: question {question} takes one of 'amber', 'mauve'; 'teal' is not one of them\n",
        )
        answered = await trio.to_thread.run_sync(cli, "answer", str(question), "mauve")
        assert answered.stdout == f"answered question {question}: mauve\n", answered.stderr
        with trio.fail_after(60):
            assert await operator_reply(hive, "manager") == f"you chose mauve for {question}"
        assert first.data["exit"] == "ok"
        again = await trio.to_thread.run_sync(cli, "answer", str(question), "--cancel")
        assert again.returncode == 1
        assert again.stderr.startswith(f"Error: question {question} is already answered")
        assert (await trio.to_thread.run_sync(cli, "questions")).stdout == "no questions wait for an answer\n"
