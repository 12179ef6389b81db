"""The operator's side: host-socket commands, and ``hyperhive questions`` / ``hyperhive answer``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core import StashKey, on_manager_host
from hyperhive_questions.questions import QuestionError, Questions

if TYPE_CHECKING:
    from hyperhive_core import Hive

QUESTIONS = StashKey[Questions]("questions")
"""The hive's questions in ``hive.stash``, created at startup."""


def questions_of(hive: Hive) -> Questions:
    """The hive's questions, created at startup."""
    return hive.stash[QUESTIONS]


def question_id(value: Any) -> int:
    """A question id from the wire: a whole number, or its digits as a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise QuestionError(f"a question id is a whole number, like 3; not {value!r}")


# The questions live with the manager, who asks them: in a hive across hosts, the
# commands run on its host, whichever host's socket, CLI or dashboard they came from.


@on_manager_host("questions")
async def list_questions(hive: Hive, all: bool = False, limit: int = 50) -> list[dict[str, Any]]:
    """Host command ``questions``: the pending questions, or with ``all`` the newest of every status."""
    found = await questions_of(hive).find(include_resolved=all, limit=limit)
    return [question.to_json() for question in found]


@on_manager_host("answer-question")
async def answer_question(hive: Hive, id: Any, answer: str) -> dict[str, Any]:
    """Host command ``answer-question``."""
    if not isinstance(answer, str):
        raise QuestionError(f"the answer must be text, not {answer!r}")
    return (await questions_of(hive).answer(question_id(id), answer)).to_json()


@on_manager_host("cancel-question")
async def cancel_question(hive: Hive, id: Any) -> dict[str, Any]:
    """Host command ``cancel-question``: resolve it with ``[cancelled]``."""
    return (await questions_of(hive).cancel(question_id(id))).to_json()


HOST_COMMANDS = {
    "questions": list_questions,
    "answer-question": answer_question,
    "cancel-question": cancel_question,
}


def remaining(seconds: float) -> str:
    """``45s``, ``9m 12s``, ``2h 05m``, ``3d 4h``: time left, to the unit that matters."""
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def describe(question: dict[str, Any]) -> list[str]:
    """A question as the CLI prints it: a heading line, then the question and its options indented."""
    if question["status"] == "pending":
        state = f"pending, expires in {remaining(question['deadline'] - time.time())}"
    else:
        state = f"{question['status']}: {question['answer']}"
    lines = [f"#{question['id']} from {question['asker']} ({state})"]
    lines += [f"    {line}" for line in question["question"].splitlines()]
    if question["options"]:
        lines.append(f"    options: {' | '.join(question['options'])}")
    return lines


def add_commands(cli: click.Group) -> None:
    from hyperhive_core import CliState, ask_daemon, echo_json, json_option, pass_state

    @cli.command(name="questions")
    @click.option("--all", "show_all", is_flag=True, help="Also the answered, cancelled and expired ones.")
    @json_option()
    @pass_state
    def questions_command(state: CliState, show_all: bool, as_json: bool) -> None:
        """List the manager's questions that wait for your answer."""
        found = ask_daemon(state, "questions", all=show_all)
        if as_json:
            echo_json(found)
            return
        if not found:
            click.echo("no questions" if show_all else "no questions wait for an answer")
        for question in found:
            click.echo("\n".join(describe(question)))

    @cli.command(name="answer")
    @click.argument("question", type=int, metavar="ID")
    @click.argument("text", required=False)
    @click.option("--cancel", is_flag=True, help="Resolve it with [cancelled] instead of an answer.")
    @pass_state
    def answer_command(state: CliState, question: int, text: str | None, cancel: bool) -> None:
        """Answer question ID with TEXT, or --cancel it; the manager gets it as an event."""
        if cancel and text is not None:
            raise click.UsageError("give either an answer TEXT or --cancel, not both")
        if cancel:
            ask_daemon(state, "cancel-question", id=question)
            click.echo(f"cancelled question {question}")
            return
        if text is None:
            raise click.UsageError("give the answer TEXT, or --cancel to withdraw the question")
        resolved = ask_daemon(state, "answer-question", id=question, answer=text)
        click.echo(f"answered question {question}: {resolved['answer']}")
