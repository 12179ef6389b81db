"""The dashboard side: ◆ M1ND H4S QU3STI0NS ◆ on the host page, and ``POST /api/answer-question``."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hyperhive_core import iso_utc
from hyperhive_core.panels import Panel
from hyperhive_questions.commands import answer_question, cancel_question
from hyperhive_questions.questions import Question, QuestionError

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

STATIC = Path(__file__).parent / "static"
ANSWER_ROUTE = "/api/answer-question"


def questions_panel(pending: list[Question]) -> Panel:
    """The section at the top of the host page; its stylesheet hides it while nothing is pending.

    It is always there, so its script is on the page to bring it back when a question arrives.
    """
    body = "".join(_question(question) for question in pending) or '<p class="empty questions-none">no questions.</p>'
    return Panel(
        key="questions",
        title="M1ND H4S QU3STI0NS",
        label="questions from the manager that wait for your answer",
        html=f'<div class="questions">{body}</div>',
        placement="top",
        order=10,
        scripts=(STATIC / "questions.js",),
        styles=(STATIC / "questions.css",),
    )


def _question(question: Question) -> str:
    qid, asker = question.id, escape(question.asker)
    if question.options:
        choices = "".join(f'<option value="{escape(option)}">{escape(option)}</option>' for option in question.options)
        field = (
            f'<select name="answer" required aria-label="answer to question {qid}">'
            f'<option value="" disabled selected>choose…</option>{choices}</select>'
        )
    else:
        field = (
            f'<textarea name="answer" rows="2" required placeholder="your answer" '
            f'aria-label="answer to question {qid}"></textarea>'
        )
    body = json.dumps({"id": qid})
    cancel = json.dumps({"id": qid, "cancel": True})
    return (
        f'<article class="question" data-question="{qid}" aria-label="question {qid} from {asker}">'
        f'<header><span class="id">#{qid}</span> from <a href="/agent/{quote(question.asker)}/">{asker}</a>'
        f' · asked <span data-ago="{question.asked_at}"></span>'
        f' · expires in <time data-countdown="{iso_utc(question.deadline)}"></time></header>'
        f'<p class="text">{escape(question.question)}</p>'
        '<div class="reply">'
        f'<form class="answer" data-api="{ANSWER_ROUTE}" data-body=\'{body}\' '
        f'data-done="answered question {qid}; the manager has it">{field}'
        f'<button type="submit" class="go" aria-label="send the answer to question {qid}">✓ 4NSW3R</button></form>'
        f'<button type="button" class="danger" data-api="{ANSWER_ROUTE}" data-body=\'{cancel}\' '
        f'data-confirm="sure? CANC3L" data-done="cancelled question {qid}" '
        f'aria-label="cancel question {qid}">✗ CANC3L</button>'
        "</div></article>"
    )


async def answer_from_json(hive: Hive, data: Any) -> dict[str, Any]:
    """``{"id": 3, "answer": "yes"}`` answers question 3; ``{"id": 3, "cancel": true}`` cancels it."""
    if not isinstance(data, dict) or "id" not in data:
        raise QuestionError('send a JSON object like {"id": 3, "answer": "yes"}, or {"id": 3, "cancel": true}')
    if data.get("cancel") is True:
        return await cancel_question(hive, data["id"])
    if "answer" not in data:
        raise QuestionError('give the "answer", or "cancel": true to withdraw the question')
    return await answer_question(hive, data["id"], data["answer"])


async def answer_view(hive: Hive) -> dict[str, Any]:
    """``POST /api/answer-question`` (contract): the question as it is now resolved."""
    from quart import request

    return await answer_from_json(hive, await request.get_json(force=True, silent=True))
