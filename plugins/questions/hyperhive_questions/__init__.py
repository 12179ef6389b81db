"""hyperhive-questions: The manager asks the operator a question, with an optional time to live.

``ask_operator`` stores the question and returns its id at once; the operator's
answer (or ``[cancelled]``, or ``[expired]`` at the deadline) reaches the manager
later as an ``operator_answered`` hive event, which wakes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core import HyperhiveError, Panel, ToolContext, hookimpl, iso_utc
from hyperhive_questions.commands import HOST_COMMANDS, QUESTIONS, add_commands, list_questions, questions_of
from hyperhive_questions.questions import EVENT, Question, Questions, QuestionsSection, m001_questions
from hyperhive_questions.web import ANSWER_ROUTE, answer_view, questions_panel

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive

__all__ = ["EVENT", "QUESTIONS", "Question", "Questions", "QuestionsSection"]


async def ask_operator(
    ctx: ToolContext, question: str, options: list[str] | None = None, ttl_seconds: int | None = None
) -> str:
    """Ask the human operator a question. It returns at once with the question's id;
    the answer arrives later as an operator_answered hive event in your inbox
    (with that id, the answer, and status answered, cancelled or expired).
    Don't wait for it: carry on with other work or end your turn.

    :param question: what you want to know, in plain words; the operator reads it on the dashboard.
    :param options: the answers to choose from, for a closed choice; leave it out for a free-text answer.
    :param ttl_seconds: how long the question stays open before it expires with the answer "[expired]";
        default [questions] default_ttl_seconds (a day).
    """
    asked = await questions_of(ctx.hive).ask(ctx.agent, question, options, ttl_seconds)
    return (
        f"question {asked.id} is with the operator, open until {iso_utc(asked.deadline)}. "
        f"The answer will arrive as an {EVENT} hive event with id {asked.id}; don't wait for it."
    )


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("questions", QuestionsSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("questions", [m001_questions])


@hookimpl
async def on_startup(hive: Hive) -> None:
    questions = hive.stash[QUESTIONS] = Questions(hive)
    await questions.load()


@hookimpl
def hive_services(hive: Hive) -> list[Callable[..., Any]]:
    return [questions_of(hive).run_reaper]


@hookimpl
def register_tools(register: Callable[..., None]) -> None:
    register(ask_operator, roles=("manager",))


@hookimpl
async def before_recv(hive: Hive, agent: str) -> None:
    await questions_of(hive).deliver_owed(agent)


@hookimpl
def register_host_commands(register: Callable[..., None]) -> None:
    for name, handler in HOST_COMMANDS.items():
        register(name, handler)


@hookimpl
def register_commands(cli: click.Group) -> None:
    add_commands(cli)


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    # Public: the HTTP contract names it, for tools outside the dashboard.
    register(ANSWER_ROUTE, answer_view, methods=("POST",), public=True)


@hookimpl
async def dashboard_panels(hive: Hive) -> list[Panel]:
    try:  # from the manager's host, wherever this dashboard runs
        pending = [Question(**question) for question in await list_questions(hive)]
    except HyperhiveError as exc:  # its host is down: say so where its questions would be
        return [questions_panel([], unreachable=str(exc))]
    return [questions_panel(pending)]
